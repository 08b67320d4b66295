//! Query strings of the open-data API, parsed strictly: percent-decoded,
//! `+` as a space, valid UTF-8 only, bounded in length and count, each
//! parameter at most once.

/// Longest query string accepted, in bytes.
pub const MAX_QUERY_BYTES: usize = 4096;

/// Most parameters in one query string.
const MAX_PARAMS: usize = 32;

/// Why a query string was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum QueryError {
    #[error("the query string is longer than {MAX_QUERY_BYTES} bytes")]
    TooLong,
    #[error("the query string has more than {MAX_PARAMS} parameters")]
    TooMany,
    #[error("a query parameter is not valid percent-encoded UTF-8")]
    Encoding,
    #[error("parameter `{0}` is given more than once")]
    Repeated(String),
}

/// The parameters of one query string.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Query {
    params: Vec<(String, String)>,
}

impl Query {
    /// Parses `raw` (the part after `?`, if any).
    pub fn parse(raw: Option<&str>) -> Result<Self, QueryError> {
        let Some(raw) = raw.filter(|r| !r.is_empty()) else {
            return Ok(Self::default());
        };
        if raw.len() > MAX_QUERY_BYTES {
            return Err(QueryError::TooLong);
        }
        let mut params: Vec<(String, String)> = Vec::new();
        for pair in raw.split('&').filter(|p| !p.is_empty()) {
            if params.len() >= MAX_PARAMS {
                return Err(QueryError::TooMany);
            }
            let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
            let (k, v) = (decode(k)?, decode(v)?);
            if params.iter().any(|(x, _)| *x == k) {
                return Err(QueryError::Repeated(crate::text::shown(&k, 40)));
            }
            params.push((k, v));
        }
        Ok(Self { params })
    }

    /// The value of parameter `name`.
    pub fn get(&self, name: &str) -> Option<&str> {
        self.params
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }
}

fn hex(b: u8) -> Option<u8> {
    match b {
        b'0'..=b'9' => Some(b - b'0'),
        b'a'..=b'f' => Some(b - b'a' + 10),
        b'A'..=b'F' => Some(b - b'A' + 10),
        _ => None,
    }
}

/// Percent-decodes `s` (`+` is a space); the result must be UTF-8.
pub fn decode(s: &str) -> Result<String, QueryError> {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        match b[i] {
            b'+' => out.push(b' '),
            b'%' => {
                let hi = b.get(i + 1).copied().and_then(hex);
                let lo = b.get(i + 2).copied().and_then(hex);
                let (Some(hi), Some(lo)) = (hi, lo) else {
                    return Err(QueryError::Encoding);
                };
                out.push(hi << 4 | lo);
                i += 2;
            }
            c => out.push(c),
        }
        i += 1;
    }
    String::from_utf8(out).map_err(|_| QueryError::Encoding)
}

#[cfg(test)]
#[allow(clippy::unwrap_used, reason = "test")]
mod tests {
    use super::*;

    #[test]
    fn parses_decodes_and_refuses_hostile_input() {
        let q = Query::parse(Some("q=Luft+qualit%C3%A4t&rows=5&fq=tags%3Aluft")).unwrap();
        assert_eq!(q.get("q"), Some("Luft qualität"));
        assert_eq!(q.get("rows"), Some("5"));
        assert_eq!(q.get("fq"), Some("tags:luft"));
        assert_eq!(q.get("start"), None);
        assert_eq!(Query::parse(None).unwrap(), Query::default());
        assert_eq!(Query::parse(Some("q=%FF%FE")), Err(QueryError::Encoding));
        assert_eq!(Query::parse(Some("q=%4")), Err(QueryError::Encoding));
        assert_eq!(Query::parse(Some("q=%zz")), Err(QueryError::Encoding));
        assert!(matches!(
            Query::parse(Some("a=1&a=2")),
            Err(QueryError::Repeated(_))
        ));
        let long = format!("q={}", "a".repeat(MAX_QUERY_BYTES));
        assert_eq!(Query::parse(Some(&long)), Err(QueryError::TooLong));
        let many: Vec<String> = (0..40).map(|i| format!("p{i}=1")).collect();
        assert_eq!(
            Query::parse(Some(&many.join("&"))),
            Err(QueryError::TooMany)
        );
    }
}
