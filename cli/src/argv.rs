//! The words after `--` of `runbox exec`, turned into the one bash script a
//! request carries.
//!
//! One word is a script as it stands (`runbox exec -- 'cd /tmp && ls'`), so
//! pipes, `&&`, `cd` and `export` work as typed. Several words are one
//! command with exactly those arguments, as `env`, `xargs` or `sudo` pass
//! them on: `runbox exec -- printf '%s\n' "a b" c` runs printf with the
//! three arguments it was given, because each word is quoted for bash before
//! the words are joined.

/// The script to run for the words after `--`.
pub fn script(words: &[String]) -> String {
    match words {
        [one] => one.clone(),
        _ => words.iter().map(|w| quote(w)).collect::<Vec<_>>().join(" "),
    }
}

/// A word as bash reads it back unchanged: as it is when it holds only
/// characters no shell treats specially, otherwise in single quotes (inside
/// which nothing is special; a single quote itself is closed, escaped and
/// reopened as `'\''`).
pub fn quote(word: &str) -> String {
    let plain = !word.is_empty()
        && word
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"_-./,:@%+=".contains(&b));
    if plain {
        return word.to_owned();
    }
    format!("'{}'", word.replace('\'', r"'\''"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn words(w: &[&str]) -> Vec<String> {
        w.iter().map(|s| (*s).to_owned()).collect()
    }

    #[test]
    fn one_word_is_a_script() {
        assert_eq!(
            script(&words(&["cd /tmp && echo $HOME"])),
            "cd /tmp && echo $HOME"
        );
    }

    #[test]
    fn several_words_keep_their_argv() {
        assert_eq!(
            script(&words(&["printf", "%s\\n", "a b", "c"])),
            r"printf '%s\n' 'a b' c"
        );
        assert_eq!(
            script(&words(&["echo", "it's", "", "$X"])),
            r"echo 'it'\''s' '' '$X'"
        );
        // `=` stays plain so that `env A=1 cmd` reads as written; a leading
        // `=` or `-` is no shell syntax either.
        assert_eq!(script(&words(&["env", "A=1", "-i", "x"])), "env A=1 -i x");
        // Globs, tildes, newlines and non-ASCII are quoted.
        assert_eq!(
            script(&words(&["ls", "*", "~", "a\nb", "é"])),
            "ls '*' '~' 'a\nb' 'é'"
        );
    }
}
