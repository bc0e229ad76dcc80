//! `cargo xtask tidy`: the repository's own code rules, checked by text.
//!
//! The checks are line-based heuristics, not a parser: `//` comments are
//! ignored (so prose may mention the words), everything else counts.
//!
//! Rules:
//! - every `unsafe {` block and `unsafe impl` under `crates/` has a
//!   `// SAFETY:` comment within the 3 lines above it (or anywhere in the
//!   comment block directly above it, for longer justifications);
//! - `crates/fuse-proto` contains no `unsafe` at all;
//! - `crates/fuse-proto/src` calls neither `.unwrap()` nor `.expect(` before
//!   its first `#[cfg(test)]` (the parser must never panic);
//! - no `dbg!(` and no tab characters in any `.rs` file.

use std::fmt;
use std::fs;
use std::path::{Path, PathBuf};

/// Directories (relative to the workspace root) whose `.rs` files are checked.
const CHECKED_DIRS: [&str; 3] = ["crates", "xtask", "tests"];

/// How many lines above an `unsafe` block its `// SAFETY:` comment may start.
const SAFETY_COMMENT_WINDOW: usize = 3;

/// Spelled in two pieces so that this file does not trip its own rule.
const DBG_MACRO: &str = concat!("dbg", "!(");

#[derive(Debug, PartialEq, Eq)]
struct Violation {
    path: PathBuf,
    /// 1-based line number.
    line: usize,
    message: &'static str,
}

impl fmt::Display for Violation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}: {}", self.path.display(), self.line, self.message)
    }
}

/// Checks every `.rs` file below [`CHECKED_DIRS`] and returns the list of
/// violations as the error.
pub fn run(root: &Path) -> Result<(), String> {
    let mut files = Vec::new();
    for dir in CHECKED_DIRS {
        collect_rust_files(&root.join(dir), &mut files)?;
    }
    files.sort();

    let mut violations = Vec::new();
    for file in &files {
        let text = fs::read_to_string(file)
            .map_err(|err| format!("cannot read {}: {err}", file.display()))?;
        let relative = file.strip_prefix(root).unwrap_or(file);
        check_file(relative, &text, &mut violations);
    }

    if violations.is_empty() {
        println!("tidy: {} files checked, no violations", files.len());
        return Ok(());
    }
    let list: Vec<String> = violations.iter().map(|v| format!("  {v}")).collect();
    Err(format!(
        "tidy found {} violation(s):\n{}",
        violations.len(),
        list.join("\n")
    ))
}

/// Recursively collects `.rs` files, skipping build output (`target`) and
/// hidden directories.
fn collect_rust_files(dir: &Path, out: &mut Vec<PathBuf>) -> Result<(), String> {
    if !dir.is_dir() {
        return Ok(());
    }
    let entries =
        fs::read_dir(dir).map_err(|err| format!("cannot list {}: {err}", dir.display()))?;
    for entry in entries {
        let entry = entry.map_err(|err| format!("cannot list {}: {err}", dir.display()))?;
        let path = entry.path();
        let name = entry.file_name();
        let name = name.to_string_lossy();
        let file_type = entry
            .file_type()
            .map_err(|err| format!("cannot stat {}: {err}", path.display()))?;
        if file_type.is_dir() {
            if name != "target" && !name.starts_with('.') {
                collect_rust_files(&path, out)?;
            }
        } else if file_type.is_file() && name.ends_with(".rs") {
            out.push(path);
        }
    }
    Ok(())
}

/// Applies every rule relevant to `path` (relative to the workspace root).
fn check_file(path: &Path, text: &str, out: &mut Vec<Violation>) {
    let lines: Vec<&str> = text.lines().collect();
    let in_crates = path.starts_with("crates");
    let in_proto = path.starts_with("crates/fuse-proto");
    let in_proto_src = path.starts_with("crates/fuse-proto/src");
    let mut reached_test_module = false;

    for (index, line) in lines.iter().enumerate() {
        let mut report = |message| {
            out.push(Violation {
                path: path.to_path_buf(),
                line: index + 1,
                message,
            });
        };
        // Tabs are banned everywhere, comments included.
        if line.contains('\t') {
            report("tab character (indent with spaces)");
        }
        let code = code_part(line);
        if code.contains(DBG_MACRO) {
            report("dbg! left in the code");
        }
        if in_crates
            && (code.contains("unsafe {") || code.contains("unsafe impl"))
            && !has_safety_comment(&lines, index)
        {
            report("unsafe without a `// SAFETY:` comment in the 3 lines above");
        }
        if in_proto && contains_word(code, "unsafe") {
            report("fuse-proto must not use unsafe");
        }
        if in_proto_src {
            if code.trim_start().starts_with("#[cfg(test)]") {
                reached_test_module = true;
            }
            if !reached_test_module && (code.contains(".unwrap()") || code.contains(".expect(")) {
                report("unwrap/expect in fuse-proto (return an error instead of panicking)");
            }
        }
    }
}

/// The part of a line before any `//` comment (a `//` inside a string literal
/// also ends it; that only makes the heuristic miss, never misreport).
fn code_part(line: &str) -> &str {
    match line.find("//") {
        Some(start) => &line[..start],
        None => line,
    }
}

/// Whether line `index` is justified by a `// SAFETY:` comment: within the
/// [`SAFETY_COMMENT_WINDOW`] lines above, or in the contiguous comment block
/// directly above (a long justification may start further up).
fn has_safety_comment(lines: &[&str], index: usize) -> bool {
    let window_start = index.saturating_sub(SAFETY_COMMENT_WINDOW);
    if lines[window_start..index]
        .iter()
        .any(|line| line.contains("// SAFETY:"))
    {
        return true;
    }
    lines[..index]
        .iter()
        .rev()
        .take_while(|line| line.trim_start().starts_with("//"))
        .any(|line| line.contains("// SAFETY:"))
}

/// Whether `word` occurs in `text` as a whole identifier (so `unsafe_code`
/// does not count as `unsafe`).
fn contains_word(text: &str, word: &str) -> bool {
    let is_ident = |c: char| c.is_ascii_alphanumeric() || c == '_';
    text.match_indices(word).any(|(start, _)| {
        let before = text[..start].chars().next_back();
        let after = text[start + word.len()..].chars().next();
        !before.is_some_and(is_ident) && !after.is_some_and(is_ident)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn violations(path: &str, text: &str) -> Vec<(usize, &'static str)> {
        let mut out = Vec::new();
        check_file(Path::new(path), text, &mut out);
        out.into_iter().map(|v| (v.line, v.message)).collect()
    }

    #[test]
    fn unsafe_block_needs_safety_comment_within_three_lines() {
        let justified = "// SAFETY: the pointer is valid\nlet a = 1;\nlet b = 2;\nunsafe { f() }\n";
        assert!(violations("crates/fuse-dev/src/ring.rs", justified).is_empty());

        let too_far = "// SAFETY: the pointer is valid\nlet a = 1;\nlet b = 2;\nlet c = 3;\n\
                       unsafe { f() }\n";
        let found = violations("crates/fuse-dev/src/ring.rs", too_far);
        assert_eq!(found.len(), 1);
        assert_eq!(found[0].0, 5);

        let missing = "fn f() {\n    unsafe { g() }\n}\nunsafe impl Send for X {}\n";
        let lines: Vec<usize> = violations("crates/fuse-dev/src/ring.rs", missing)
            .iter()
            .map(|v| v.0)
            .collect();
        assert_eq!(lines, [2, 4]);
    }

    #[test]
    fn long_safety_comment_block_counts() {
        let text = "// SAFETY: first line of a long story\n// two\n// three\n// four\n\
                    unsafe impl Sync for Pool {}\n";
        assert!(violations("crates/fuse-dev/src/pool.rs", text).is_empty());
    }

    #[test]
    fn unsafe_outside_crates_is_not_checked_for_safety_comments() {
        assert!(violations("tests/common/mod.rs", "unsafe { f() }\n").is_empty());
    }

    #[test]
    fn fuse_proto_rejects_any_unsafe_but_not_lookalikes() {
        let found = violations("crates/fuse-proto/src/abi.rs", "unsafe fn f() {}\n");
        assert_eq!(found.len(), 1);
        let fine = "#![forbid(unsafe_code)]\n//! contains no unsafe\nlet not_unsafe = 1;\n";
        assert!(violations("crates/fuse-proto/src/lib.rs", fine).is_empty());
    }

    #[test]
    fn fuse_proto_unwrap_is_allowed_only_in_test_module() {
        let text = "let a = x.unwrap();\nlet b = y.expect(\"b\");\nlet c = z.unwrap_or(0);\n\
                    #[cfg(test)]\nmod tests { fn t() { x.unwrap(); } }\n";
        let lines: Vec<usize> = violations("crates/fuse-proto/src/request.rs", text)
            .iter()
            .map(|v| v.0)
            .collect();
        assert_eq!(lines, [1, 2]);
        // Other crates may unwrap (with a reason).
        assert!(violations("crates/blockdev/src/lib.rs", "x.unwrap();\n").is_empty());
    }

    #[test]
    fn dbg_and_tabs_are_reported_everywhere_but_comments_only_for_tabs() {
        let dbg_call = format!("let x = {DBG_MACRO}y);\n");
        assert_eq!(violations("xtask/src/main.rs", &dbg_call).len(), 1);
        let dbg_in_comment = format!("// never leave {DBG_MACRO}) behind\n");
        assert!(violations("xtask/src/main.rs", &dbg_in_comment).is_empty());
        assert_eq!(
            violations("tests/foundation.rs", "fn f() {\n\tg();\n}\n"),
            [(2, "tab character (indent with spaces)")]
        );
    }

    #[test]
    fn contains_word_respects_identifier_boundaries() {
        assert!(contains_word("unsafe {", "unsafe"));
        assert!(contains_word("pub unsafe fn", "unsafe"));
        assert!(!contains_word("unsafe_code", "unsafe"));
        assert!(!contains_word("is_unsafe", "unsafe"));
    }
}
