//! Operator input quoted in messages, shown as it is: control characters and invisible
//! ones (a BOM, NUL, zero-width and other format characters) escaped, so that what the
//! message quotes is what was typed.

/// `s` with every control or invisible character written as `\u{...}` (tab as `\t`).
pub fn shown(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '\t' => out.push_str("\\t"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            c if invisible(c) => out.push_str(&format!("\\u{{{:x}}}", c as u32)),
            c => out.push(c),
        }
    }
    out
}

/// Control characters, and the format and separator characters that print as nothing.
fn invisible(c: char) -> bool {
    c.is_control()
        || matches!(c,
            '\u{00ad}' | '\u{034f}' | '\u{061c}' | '\u{115f}' | '\u{1160}' | '\u{17b4}' | '\u{17b5}'
            | '\u{180b}'..='\u{180f}' | '\u{200b}'..='\u{200f}' | '\u{2028}'..='\u{202e}'
            | '\u{2060}'..='\u{206f}' | '\u{3164}' | '\u{fe00}'..='\u{fe0f}' | '\u{feff}'
            | '\u{ffa0}' | '\u{fff0}'..='\u{fffb}')
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn invisible_characters_are_shown() {
        assert_eq!(shown("192.0.2.0/24"), "192.0.2.0/24");
        assert_eq!(shown("\u{feff}192.0.2.0"), "\\u{feff}192.0.2.0");
        assert_eq!(shown("a\0b\x1b[31m"), "a\\u{0}b\\u{1b}[31m");
        assert_eq!(shown("x\u{200b}y"), "x\\u{200b}y");
        assert_eq!(shown("tab\there"), "tab\\there");
    }
}
