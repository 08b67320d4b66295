//! RFC 3339 times, formatted and parsed in one place. A time that cannot be
//! represented (only corrupt data holds one) is shown as the Unix epoch, so
//! every output stays a valid RFC 3339 / `xsd:dateTime` value.

use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;

/// Formats milliseconds since the Unix epoch, e.g. `2025-03-03T00:00:00Z`.
pub fn format_unix_ms(ms: i64) -> String {
    format(OffsetDateTime::from_unix_timestamp_nanos(i128::from(ms) * 1_000_000).ok())
}

/// Formats seconds since the Unix epoch.
pub fn format_unix_secs(secs: i64) -> String {
    format(OffsetDateTime::from_unix_timestamp(secs).ok())
}

fn format(t: Option<OffsetDateTime>) -> String {
    t.unwrap_or(OffsetDateTime::UNIX_EPOCH)
        .format(&Rfc3339)
        .unwrap_or_else(|_| "1970-01-01T00:00:00Z".to_owned())
}

/// Parses an RFC 3339 time; the error names the (truncated) input.
pub fn parse(s: &str) -> Result<OffsetDateTime, String> {
    OffsetDateTime::parse(s, &Rfc3339).map_err(|_| {
        format!(
            "`{}` is not an RFC 3339 time (e.g. 2025-03-03T00:00:00Z)",
            crate::text::shown(s, 60)
        )
    })
}

#[cfg(test)]
#[allow(clippy::unwrap_used, reason = "test")]
mod tests {
    use super::*;

    #[test]
    fn formats_and_parses_round_trip() {
        assert_eq!(format_unix_ms(1_740_960_000_000), "2025-03-03T00:00:00Z");
        assert_eq!(format_unix_secs(1_740_960_000), "2025-03-03T00:00:00Z");
        assert_eq!(
            parse("2025-03-03T00:00:00Z").unwrap().unix_timestamp(),
            1_740_960_000
        );
        assert_eq!(format_unix_secs(i64::MAX), "1970-01-01T00:00:00Z");
        let e = parse("03/01/2025").unwrap_err();
        assert!(e.contains("`03/01/2025` is not an RFC 3339 time"), "{e}");
    }
}
