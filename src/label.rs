//! A peer's name: its key's `Debug` form, bounded and made safe to print, made once per
//! tracked peer and shared by errors, snapshots, traces and metric labels.

use std::fmt::{self, Debug, Write};
use std::sync::Arc;

/// Longest peer label, in bytes: the name errors, snapshots, traces and metric labels give
/// a peer. It is its key's `Debug` form (without the quotes of a string key), with control
/// and bidirectional-override characters escaped, cut on a character boundary with `…`
/// when longer. A peer's label is made once and shared by all of them.
pub const MAX_LABEL_BYTES: usize = 256;

/// Marks a label cut short.
const CUT: char = '…';

/// A peer's label (see [`MAX_LABEL_BYTES`]). Formatting stops once the bound is reached,
/// so a huge key costs no more than a short one.
pub(crate) fn label<K: Debug + ?Sized>(key: &K) -> Arc<str> {
    // Room for a string key's quotes, stripped below.
    let room = MAX_LABEL_BYTES + 2;
    let mut out = Bounded {
        // An escaped character is at most 10 bytes: written before it is taken back.
        text: String::with_capacity(room + 10),
        room,
        full: false,
    };
    // An error here is `out` being full, or a `Debug` that failed: keep what was written.
    let _ = write!(out, "{key:?}");
    let Bounded { mut text, full, .. } = out;
    if text.starts_with('"') {
        if !full && text.len() >= 2 && text.ends_with('"') {
            text.pop();
        }
        text.remove(0);
    }
    if full || text.len() > MAX_LABEL_BYTES {
        let mut end = MAX_LABEL_BYTES - CUT.len_utf8();
        while !text.is_char_boundary(end) {
            end -= 1;
        }
        text.truncate(end);
        text.push(CUT);
    }
    text.into()
}

/// A `fmt::Write` that escapes control and invisible formatting characters and refuses
/// more than `room` bytes.
struct Bounded {
    text: String,
    room: usize,
    full: bool,
}

impl Write for Bounded {
    fn write_str(&mut self, s: &str) -> fmt::Result {
        for c in s.chars() {
            let at = self.text.len();
            if c.is_control() {
                write!(self.text, "{}", c.escape_debug())?;
            } else if is_invisible_format(c) {
                write!(self.text, "{}", c.escape_unicode())?;
            } else {
                self.text.push(c);
            }
            if self.text.len() > self.room {
                self.text.truncate(at);
                self.full = true;
                return Err(fmt::Error);
            }
        }
        Ok(())
    }
}

/// Characters that change how a line reads without showing: zero-width characters, the
/// line and paragraph separators, bidirectional overrides and isolates, the byte-order mark.
fn is_invisible_format(c: char) -> bool {
    matches!(
        c,
        '\u{200b}'..='\u{200f}' | '\u{2028}'..='\u{202e}' | '\u{2060}'..='\u{2069}' | '\u{feff}'
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn string_keys_are_labelled_without_quotes() {
        assert_eq!(&*label(&String::from("10.0.0.7:9000")), "10.0.0.7:9000");
        assert_eq!(&*label(&7u32), "7");
        assert_eq!(&*label(&""), "");
        assert_eq!(&*label(&"\""), "\\\"");
    }

    #[test]
    fn long_labels_are_cut_to_the_bound_with_a_marker() {
        for len in [MAX_LABEL_BYTES - 1, MAX_LABEL_BYTES] {
            assert_eq!(label(&"x".repeat(len)).len(), len, "fits whole");
        }
        for len in [MAX_LABEL_BYTES + 1, MAX_LABEL_BYTES + 2, 100_000] {
            let cut = label(&"x".repeat(len));
            assert_eq!(cut.len(), MAX_LABEL_BYTES, "{len}");
            assert!(cut.ends_with(CUT) && !cut.starts_with('"'), "{cut}");
        }
    }

    #[test]
    fn a_failing_debug_keeps_what_it_wrote() {
        struct Fails;
        impl Debug for Fails {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("half")?;
                Err(fmt::Error)
            }
        }
        assert_eq!(&*label(&Fails), "half");
    }
}
