//! Where in the source an interrupt was fired or recognized, named by a path relative to
//! its crate: an error that crosses a process boundary (a gRPC status message, a log line
//! shipped elsewhere) must not carry the build machine's directories.

use std::fmt;
use std::panic::Location;

/// This crate's own root, as the compiler names its files when it is built from a
/// registry or a path outside the workspace.
const OWN_ROOT: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/");

/// Directories a crate's sources sit in: an absolute path is cut to start at the last one.
const SOURCE_DIRS: [&str; 4] = ["src", "tests", "examples", "benches"];

/// A place in the source: a file relative to its crate (`src/peer/mod.rs`), a line and a
/// column. `Display` and `Debug` print `file:line:column`.
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct Site {
    location: &'static Location<'static>,
}

impl Site {
    pub(crate) fn new(location: &'static Location<'static>) -> Self {
        Site { location }
    }

    /// The location as the compiler recorded it (possibly an absolute build path).
    pub(crate) fn location(&self) -> &'static Location<'static> {
        self.location
    }

    /// The file, relative to its crate's root: `src/peer/mod.rs`, never an absolute path.
    pub fn file(&self) -> &'static str {
        relative(self.location.file())
    }

    /// The line, from 1.
    pub fn line(&self) -> u32 {
        self.location.line()
    }

    /// The column, from 1.
    pub fn column(&self) -> u32 {
        self.location.column()
    }
}

impl fmt::Display for Site {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}:{}", self.file(), self.line(), self.column())
    }
}

impl fmt::Debug for Site {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

/// `file` relative to its crate: this crate's own root stripped, a relative path kept, and
/// any other absolute path cut at its last source directory (`.../src/x.rs` -> `src/x.rs`),
/// else to its file name.
fn relative(file: &'static str) -> &'static str {
    if let Some(rest) = file.strip_prefix(OWN_ROOT) {
        return rest;
    }
    let absolute = file.starts_with(['/', '\\']) || file.as_bytes().get(1) == Some(&b':');
    if !absolute {
        return file;
    }
    let cut = SOURCE_DIRS
        .iter()
        .flat_map(|dir| {
            let unix = file.rfind(&format!("/{dir}/"));
            let windows = file.rfind(&format!("\\{dir}\\"));
            unix.into_iter().chain(windows)
        })
        .max();
    match cut {
        Some(at) => &file[at + 1..],
        None => file.rsplit(['/', '\\']).next().unwrap_or(file),
    }
}

#[cfg(test)]
mod tests {
    use super::relative;

    #[test]
    fn paths_are_cut_to_their_crate() {
        assert_eq!(relative("src/peer/mod.rs"), "src/peer/mod.rs");
        assert_eq!(relative("loopback/src/lib.rs"), "loopback/src/lib.rs");
        let own = concat!(env!("CARGO_MANIFEST_DIR"), "/src/call.rs");
        assert_eq!(relative(own), "src/call.rs");
        assert_eq!(
            relative(
                "/home/ci/.cargo/registry/src/index-1/tower-adaptive-timeout-0.1.0/src/peer/mod.rs"
            ),
            "src/peer/mod.rs"
        );
        assert_eq!(relative("/build/app/tests/it.rs"), "tests/it.rs");
        assert_eq!(relative("C:\\b\\app\\src\\main.rs"), "src\\main.rs");
        assert_eq!(relative("/tmp/generated.rs"), "generated.rs");
    }
}
