//! The dashboard's files, embedded in the binary at build time: the page,
//! its script and style, and xterm.js (vendored from npm, pinned; see
//! `assets/vendor/README.md` and `scripts/vendor-xterm`).

pub const INDEX: &str = include_str!("assets/index.html");

/// What `/` answers without a token.
pub const UNAUTHORIZED_PAGE: &str = include_str!("assets/unauthorized.html");

/// Every file under `/assets/`: name, bytes, media type.
const FILES: &[(&str, &[u8], &str)] = &[
    (
        "app.js",
        include_bytes!("assets/app.js"),
        "text/javascript; charset=utf-8",
    ),
    (
        "style.css",
        include_bytes!("assets/style.css"),
        "text/css; charset=utf-8",
    ),
    (
        "xterm.mjs",
        include_bytes!("assets/vendor/xterm.mjs"),
        "text/javascript; charset=utf-8",
    ),
    (
        "xterm.css",
        include_bytes!("assets/vendor/xterm.css"),
        "text/css; charset=utf-8",
    ),
];

/// The file named `name` (no directories: a name with a slash is none).
pub fn find(name: &str) -> Option<(&'static [u8], &'static str)> {
    FILES
        .iter()
        .find(|(n, _, _)| *n == name)
        .map(|(_, bytes, mime)| (*bytes, *mime))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The vendored files are the ones `assets/vendor/SHA256SUMS` names
    /// (checked against npm's published tarball by `scripts/vendor-xterm`).
    #[test]
    fn the_vendored_files_are_the_pinned_ones() {
        let sums = include_str!("assets/vendor/SHA256SUMS");
        let named: Vec<&str> = sums
            .lines()
            .filter_map(|l| l.split_whitespace().nth(1))
            .collect();
        for file in ["xterm.mjs", "xterm.css", "xterm.LICENSE"] {
            assert!(named.contains(&file), "{file} is not in SHA256SUMS");
        }
        assert!(find("xterm.mjs").is_some());
        assert!(find("../index.html").is_none());
        assert!(find("").is_none());
    }
}
