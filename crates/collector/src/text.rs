//! Text that userspace chooses (process names, container names) made safe for a label value
//! and a terminal: control characters (newline, tab, escape …) and the Unicode bidirectional
//! controls (a right-to-left override makes `exe.txt` display as `txt.exe` in a dashboard)
//! become `?`, as `ps` shows control characters.

/// Whether `c` may not appear as it is in a label value or on a terminal.
pub fn is_unsafe(c: char) -> bool {
    c.is_control()
        || matches!(c,
            '\u{061C}' | '\u{200E}' | '\u{200F}' | '\u{202A}'..='\u{202E}' | '\u{2066}'..='\u{2069}')
}

/// `s` with every unsafe character replaced by `?`, at most `max` characters long.
pub fn safe(s: &str, max: usize) -> String {
    s.chars()
        .map(|c| if is_unsafe(c) { '?' } else { c })
        .take(max)
        .collect()
}

#[cfg(test)]
mod tests {
    #[test]
    fn controls_and_bidi_overrides_are_replaced() {
        assert_eq!(super::safe("web\n1\t\u{1b}[31m", 64), "web?1??[31m");
        assert_eq!(super::safe("evil\u{202E}txt.exe", 64), "evil?txt.exe");
        assert_eq!(super::safe("a\u{2066}b\u{2069}\u{200F}", 64), "a?b??");
        assert_eq!(
            super::safe("ünïcödé 名前", 64),
            "ünïcödé 名前",
            "letters stay"
        );
        assert_eq!(super::safe("abcdef", 3), "abc");
    }
}
