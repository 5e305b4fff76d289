//! Glob patterns for `find_files`: `*`, `**`, `?`, `[...]`, matched against
//! paths relative to the directory searched.
//!
//! Written here rather than taken from a crate because the rules the file
//! API promises are few and must hold on every backend: `/` separates
//! segments and is never matched by a wildcard; `**` as a whole segment
//! matches any number of segments (zero included); `*` matches any run of
//! characters within a segment (dot-files included); `?` one character;
//! `[abc]`, `[a-z]`, `[!a-z]` (or `[^a-z]`) one character of a class; `\`
//! escapes the next character. A glob never reaches outside its directory:
//! `..` segments and leading `/` are refused.

/// Why a glob was refused.
pub(crate) type GlobError = &'static str;

/// A parsed glob.
#[derive(Debug)]
pub(crate) struct Glob {
    segments: Vec<Segment>,
}

#[derive(Debug, PartialEq)]
enum Segment {
    /// `**`: any number of whole segments.
    AnyDepth,
    /// One segment's pattern.
    Pattern(Vec<Token>),
}

#[derive(Debug, PartialEq)]
enum Token {
    Char(char),
    AnyChar,
    Star,
    Class {
        negated: bool,
        ranges: Vec<(char, char)>,
    },
}

impl Glob {
    /// Parses `glob`; refuses empty globs, absolute globs, `..` segments,
    /// control characters and malformed classes.
    pub(crate) fn parse(glob: &str) -> Result<Self, GlobError> {
        if glob.is_empty() {
            return Err("empty glob");
        }
        if glob.chars().any(char::is_control) {
            return Err("a glob may not contain NUL or control characters");
        }
        if glob.starts_with('/') {
            return Err("a glob is relative to the directory searched and may not start with '/'");
        }
        let mut segments = Vec::new();
        for raw in glob.split('/') {
            match raw {
                "" | "." => {}
                ".." => {
                    return Err(
                        "'..' is not allowed: a glob only matches inside the directory searched",
                    );
                }
                "**" => {
                    // `**/**` means the same as `**`.
                    if segments.last() != Some(&Segment::AnyDepth) {
                        segments.push(Segment::AnyDepth);
                    }
                }
                s => segments.push(Segment::Pattern(parse_segment(s)?)),
            }
        }
        if segments.is_empty() {
            return Err("the glob names no file (only '.' or '/' segments)");
        }
        Ok(Self { segments })
    }

    /// The leading segments without wildcards, joined by `/` (empty when the
    /// first segment has one): every match lies below this directory, so a
    /// listing can start there. The last segment is never included, since
    /// it names the files themselves.
    pub(crate) fn literal_dir(&self) -> String {
        let mut out: Vec<String> = Vec::new();
        for segment in &self.segments[..self.segments.len() - 1] {
            let Segment::Pattern(tokens) = segment else {
                break;
            };
            let literal: Option<String> = tokens
                .iter()
                .map(|t| match t {
                    Token::Char(c) => Some(*c),
                    _ => None,
                })
                .collect();
            match literal {
                Some(s) => out.push(s),
                None => break,
            }
        }
        out.join("/")
    }

    /// Whether `path` (relative, segments separated by `/`) matches.
    pub(crate) fn matches(&self, path: &str) -> bool {
        let parts: Vec<&str> = path.split('/').collect();
        let (m, n) = (self.segments.len(), parts.len());
        // dp[i][j]: segments[i..] match parts[j..]. Filled from the end, so
        // `**` costs O(m·n) instead of backtracking exponentially.
        let mut dp = vec![vec![false; n + 1]; m + 1];
        dp[m][n] = true;
        for i in (0..m).rev() {
            for j in (0..=n).rev() {
                dp[i][j] = match &self.segments[i] {
                    Segment::AnyDepth => dp[i + 1][j] || (j < n && dp[i][j + 1]),
                    Segment::Pattern(tokens) => {
                        j < n && dp[i + 1][j + 1] && segment_matches(tokens, parts[j])
                    }
                };
            }
        }
        dp[0][0]
    }
}

fn parse_segment(s: &str) -> Result<Vec<Token>, GlobError> {
    let mut tokens = Vec::new();
    let mut chars = s.chars().peekable();
    while let Some(c) = chars.next() {
        let token = match c {
            '*' => {
                // `a**b` within a segment is just `a*b`.
                if tokens.last() == Some(&Token::Star) {
                    continue;
                }
                Token::Star
            }
            '?' => Token::AnyChar,
            '\\' => Token::Char(chars.next().ok_or("a glob may not end with '\\'")?),
            '[' => {
                let negated = matches!(chars.peek(), Some('!' | '^'));
                if negated {
                    chars.next();
                }
                let mut ranges = Vec::new();
                let mut first = true;
                loop {
                    let c = match chars.next() {
                        None => return Err("unclosed '[' in glob"),
                        // `]` first in a class is a member, as in shells.
                        Some(']') if !first => break,
                        Some('\\') => chars.next().ok_or("a glob may not end with '\\'")?,
                        Some(c) => c,
                    };
                    first = false;
                    let mut ahead = chars.clone();
                    if ahead.next() == Some('-') && ahead.peek().is_some_and(|&e| e != ']') {
                        chars.next();
                        let end = match chars.next() {
                            Some('\\') => chars.next().ok_or("a glob may not end with '\\'")?,
                            Some(e) => e,
                            None => return Err("unclosed '[' in glob"),
                        };
                        if end < c {
                            return Err("a range in '[...]' runs backwards");
                        }
                        ranges.push((c, end));
                    } else {
                        ranges.push((c, c));
                    }
                }
                Token::Class { negated, ranges }
            }
            c => Token::Char(c),
        };
        tokens.push(token);
    }
    Ok(tokens)
}

impl Token {
    fn matches_char(&self, c: char) -> bool {
        match self {
            Token::Char(t) => *t == c,
            Token::AnyChar => true,
            Token::Star => unreachable!("stars are handled by segment_matches"),
            Token::Class { negated, ranges } => {
                ranges.iter().any(|&(lo, hi)| lo <= c && c <= hi) != *negated
            }
        }
    }
}

/// Wildcard matching of one segment: the classic two-pointer walk that, on
/// a mismatch, lets the last `*` swallow one more character.
fn segment_matches(tokens: &[Token], segment: &str) -> bool {
    let chars: Vec<char> = segment.chars().collect();
    let (mut t, mut c) = (0, 0);
    let mut star: Option<(usize, usize)> = None;
    while c < chars.len() {
        match tokens.get(t) {
            Some(Token::Star) => {
                star = Some((t, c));
                t += 1;
            }
            Some(token) if token.matches_char(chars[c]) => {
                t += 1;
                c += 1;
            }
            _ => match star {
                Some((st, sc)) => {
                    t = st + 1;
                    c = sc + 1;
                    star = Some((st, sc + 1));
                }
                None => return false,
            },
        }
    }
    tokens[t..].iter().all(|tok| *tok == Token::Star)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn m(glob: &str, path: &str) -> bool {
        Glob::parse(glob).unwrap().matches(path)
    }

    #[test]
    fn stars_stay_within_a_segment() {
        assert!(m("*.py", "app.py"));
        assert!(m("*.py", ".hidden.py"));
        assert!(!m("*.py", "src/app.py"));
        assert!(m("src/*.py", "src/app.py"));
        assert!(!m("src/*.py", "src/a/app.py"));
        assert!(m("a*b*c", "abc"));
        assert!(m("a*b*c", "aXbYbZc"));
        assert!(!m("a*b*c", "aXbYbZ"));
        assert!(m("*", "x"));
        assert!(!m("*", "x/y"));
        assert!(m("a**b", "aXXb"));
    }

    #[test]
    fn double_star_spans_any_depth() {
        assert!(m("**/*.py", "app.py"));
        assert!(m("**/*.py", "src/app.py"));
        assert!(m("**/*.py", "a/b/c/app.py"));
        assert!(!m("**/*.py", "a/b/c/app.pyc"));
        assert!(m("src/**", "src/a"));
        assert!(m("src/**", "src/a/b"));
        assert!(!m("src/**", "lib/a"));
        assert!(m("a/**/z", "a/z"));
        assert!(m("a/**/z", "a/b/c/z"));
        assert!(m("**/**/x", "x"));
        assert!(m("**", "any/thing/at/all"));
    }

    #[test]
    fn question_marks_classes_and_escapes() {
        assert!(m("?.txt", "a.txt"));
        assert!(!m("?.txt", "ab.txt"));
        assert!(m("[ab].txt", "b.txt"));
        assert!(!m("[ab].txt", "c.txt"));
        assert!(m("[a-c]x", "bx"));
        assert!(!m("[!a-c]x", "bx"));
        assert!(m("[^a-c]x", "dx"));
        assert!(m("[]]", "]"));
        assert!(m("[a-]", "-"));
        assert!(m("\\*", "*"));
        assert!(!m("\\*", "x"));
        assert!(m("ü?", "üß"));
        assert!(m("./src/./*.rs", "src/main.rs"));
    }

    #[test]
    fn bad_globs_are_refused() {
        for bad in [
            "",
            "../*",
            "a/../../b",
            "**/..",
            "/etc/*",
            "[abc",
            "x\\",
            "[z-a]",
            ".",
            "a\0b",
        ] {
            assert!(Glob::parse(bad).is_err(), "{bad:?} accepted");
        }
        // Dots inside names are fine.
        assert!(m("..a", "..a"));
    }

    #[test]
    fn the_literal_directory_narrows_the_listing() {
        let dir = |g: &str| Glob::parse(g).unwrap().literal_dir();
        assert_eq!(dir("src/lib/*.rs"), "src/lib");
        assert_eq!(dir("src/**/x.rs"), "src");
        assert_eq!(dir("*.rs"), "");
        assert_eq!(dir("s?c/x"), "");
        assert_eq!(dir("src/app.py"), "src");
        assert_eq!(dir("a\\*b/c"), "a*b");
    }

    #[test]
    fn many_stars_do_not_explode() {
        let glob = Glob::parse(&"**/a*".repeat(20)).unwrap();
        let path = vec!["b"; 40].join("/");
        let t = std::time::Instant::now();
        assert!(!glob.matches(&path));
        assert!(t.elapsed() < std::time::Duration::from_secs(1));
    }
}
