//! The one JSON helper the client needs: its reports are flat objects of
//! numbers and strings, written by hand rather than through a serializer.

/// `text` as a JSON string literal, quotes and escapes included.
pub fn string(text: &str) -> String {
    let mut out = String::from("\"");
    for c in text.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            c if (c as u32) < 0x20 => out.push_str(&format!("\\u{:04x}", c as u32)),
            c => out.push(c),
        }
    }
    out.push('"');
    out
}
