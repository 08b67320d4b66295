//! User-supplied text in messages and logs: the one way a value a caller
//! or a file chose is shortened before it is echoed, so a hostile value
//! cannot flood an error message, a log line or an audit label.

/// The first `max` characters of `s` (whole characters, never a cut
/// UTF-8 sequence).
pub fn shown(s: &str, max: usize) -> String {
    s.chars().take(max).collect()
}

#[cfg(test)]
mod tests {
    use super::shown;

    #[test]
    fn shortens_by_characters_not_bytes() {
        assert_eq!(shown("München", 3), "Mün");
        assert_eq!(shown("ab", 10), "ab");
        assert_eq!(shown("", 5), "");
    }
}
