//! Compiles a C program against a kernel FUSE header and compares what C
//! says (struct sizes, every field's offset and size, every constant's
//! value) with the Rust definitions.
//!
//! The header is `/usr/include/linux/fuse.h` (7.38 on Debian 12) unless
//! `FUSE_PROTO_C_HEADER` names another, e.g. libfuse's 7.45
//! `include/fuse_kernel.h`. The test
//!
//! 1. preprocesses the header and lists its structs (with their fields),
//!    enum constants and macros, so that nothing it declares is skipped;
//! 2. generates a C program printing `sizeof`/`offsetof` of every struct
//!    and field and the value of every constant both sides know, compiles
//!    it with `cc` and runs it;
//! 3. requires every struct and field to match, except the documented
//!    7.38 → 7.45 renames ([`RENAMES`]), which must cover exactly the same
//!    bytes; every struct and constant of the header to exist in Rust; and
//!    every Rust item missing from an older header to be a documented later
//!    addition ([`NEWER_THAN_7_38`], [`LATE_7_38`]).
//!
//! Without a C compiler or the header it prints why and passes.

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::Command;

use common::{ConstantValue, StructLayout, constant_values, struct_layouts};

/// Fields that a header older than 7.45 declares under another name. The
/// C field must occupy exactly the bytes of the listed Rust fields that
/// fall inside it.
struct Rename {
    c_struct: &'static str,
    c_field: &'static str,
    rust_fields: &'static [&'static str],
    why: &'static str,
}

const RENAMES: &[Rename] = &[
    Rename {
        c_struct: "fuse_open_out",
        c_field: "padding",
        rust_fields: &["backing_id"],
        why: "7.40 named bytes 12..16 `backing_id` (passthrough)",
    },
    Rename {
        c_struct: "fuse_init_out",
        c_field: "unused",
        rust_fields: &["max_stack_depth", "request_timeout", "unused"],
        why: "7.40 carved `max_stack_depth` (36..40) and 7.43 `request_timeout` (40..42) \
              out of the reserved tail, which 7.38 calls `unused[7]` (36..64)",
    },
];

/// Structs and constants added after protocol 7.38: a 7.38 header lacks
/// all of them, and any older-than-7.45 header lacks only entries from
/// this list and [`LATE_7_38`].
const NEWER_THAN_7_38: &[&str] = &[
    // 7.39: statx.
    "fuse_sx_time",
    "fuse_statx",
    "fuse_statx_in",
    "fuse_statx_out",
    "FUSE_STATX",
    "FUSE_DIRECT_IO_ALLOW_MMAP",
    "FUSE_DIRECT_IO_RELAX",
    // 7.40: passthrough, resend.
    "fuse_backing_map",
    "FUSE_PASSTHROUGH",
    "FOPEN_PASSTHROUGH",
    "FUSE_DEV_IOC_BACKING_OPEN",
    "FUSE_DEV_IOC_BACKING_CLOSE",
    "FUSE_NO_EXPORT_SUPPORT",
    "FUSE_HAS_RESEND",
    "FUSE_NOTIFY_RESEND",
    "FUSE_UNIQUE_RESEND",
    // 7.41: idmapped mounts.
    "FUSE_ALLOW_IDMAP",
    "FUSE_INVALID_UIDGID",
    // 7.42: FUSE-over-io_uring.
    "fuse_uring_ent_in_out",
    "fuse_uring_req_header",
    "fuse_uring_cmd_req",
    "FUSE_OVER_IO_URING",
    "FUSE_URING_IN_OUT_HEADER_SZ",
    "FUSE_URING_OP_IN_OUT_SZ",
    "FUSE_IO_URING_CMD_INVALID",
    "FUSE_IO_URING_CMD_REGISTER",
    "FUSE_IO_URING_CMD_COMMIT_AND_FETCH",
    // 7.43: request timeouts.
    "FUSE_REQUEST_TIMEOUT",
    // 7.44: epochs.
    "FUSE_NOTIFY_INC_EPOCH",
    // 7.45 (Linux 6.18).
    "fuse_copy_file_range_out",
    "FUSE_COPY_FILE_RANGE_64",
    "fuse_notify_prune_out",
    "FUSE_NOTIFY_PRUNE",
    "FUSE_DEV_IOC_SYNC_INIT",
];

/// Supplementary groups: part of 7.38 in the changelog, but added in Linux
/// 6.4 after the minor had been bumped in 6.3, so early 7.38 headers (such
/// as Debian 12's linux-libc-dev 6.1) lack them.
const LATE_7_38: &[&str] = &[
    "fuse_supp_groups",
    "FUSE_CREATE_SUPP_GROUP",
    "FUSE_EXT_GROUPS",
];

/// Header macros that are not constants this crate mirrors.
const NOT_VALUES: &[(&str, &str)] = &[
    (
        "FUSE_KERNEL_MINOR_VERSION",
        "the header's own version, checked separately",
    ),
    (
        "FUSE_DIRENT_SIZE",
        "takes a pointer to a record; abi::dirent_size",
    ),
    (
        "FUSE_DIRENTPLUS_SIZE",
        "takes a pointer to a record; abi::direntplus_size",
    ),
    (
        "FUSE_REMOVEMAPPING_MAX_ENTRY",
        "uses the kernel-internal PAGE_SIZE",
    ),
    (
        "FUSE_NOTIFY_CODE_MAX",
        "enum sentinel of older headers, not a code",
    ),
];

#[test]
fn c_header_agrees_with_the_rust_definitions() {
    let Some(setup) = Setup::find() else {
        return;
    };
    let scan = setup.scan();
    let minor = scan
        .macros
        .get("FUSE_KERNEL_MINOR_VERSION")
        .and_then(|value| value.trim().parse::<u32>().ok())
        .expect("the header defines FUSE_KERNEL_MINOR_VERSION");
    println!("probing {} (protocol 7.{minor})", setup.header.display());
    if !(38..=fuse_proto::KERNEL_MINOR_VERSION).contains(&minor) {
        // Older headers lack fields (total_extlen, flags2, ...) whose
        // absence this probe does not model; newer ones need a newer crate.
        println!(
            "SKIP: c_header_probe: the probe supports headers 7.38..=7.45, this one is 7.{minor}"
        );
        return;
    }

    let layouts = struct_layouts();
    let constants = constant_values();
    let output = setup.run_probe(&scan, &layouts, &constants);

    let mut failures = Vec::new();
    let mut absent = BTreeSet::new();
    compare_structs(&scan, &layouts, &output, &mut failures, &mut absent);
    compare_constants(&scan, &constants, &output, &mut failures, &mut absent);
    check_absent(minor, &absent, &mut failures);
    assert!(
        failures.is_empty(),
        "C header and Rust disagree:\n{}",
        failures.join("\n")
    );
    println!(
        "checked {} structs and {} constants; absent from this header (later additions): {:?}",
        output.structs.len(),
        output.constants.len(),
        absent
    );
}

fn compare_structs(
    scan: &Scan,
    layouts: &[StructLayout],
    output: &ProbeOutput,
    failures: &mut Vec<String>,
    absent: &mut BTreeSet<String>,
) {
    let rust_names: BTreeSet<&str> = layouts.iter().map(|layout| layout.c_name).collect();
    for name in scan.structs.keys() {
        if !rust_names.contains(name.as_str()) {
            failures.push(format!("header struct {name} has no Rust counterpart"));
        }
    }
    for layout in layouts {
        let Some(c_struct) = output.structs.get(layout.c_name) else {
            absent.insert(layout.c_name.to_string());
            continue;
        };
        if c_struct.size != layout.size {
            failures.push(format!(
                "{}: sizeof {} in C, size_of {} in Rust",
                layout.c_name, c_struct.size, layout.size
            ));
        }
        let mut covered = BTreeSet::new();
        for c_field in &c_struct.fields {
            let same = layout.field(&c_field.name).filter(|field| {
                field.offset == c_field.offset
                    && field.size == c_field.size
                    && field.flexible == c_field.flexible
            });
            if let Some(field) = same {
                covered.insert(field.c_name);
                continue;
            }
            match reconcile_rename(layout, c_field) {
                Ok((rust_fields, why)) => {
                    println!(
                        "  {}.{} ({}+{}) = Rust {:?}: {why}",
                        layout.c_name, c_field.name, c_field.offset, c_field.size, rust_fields
                    );
                    covered.extend(rust_fields);
                }
                Err(reason) => failures.push(format!(
                    "{}.{}: C offset {} size {}{}; {reason}",
                    layout.c_name,
                    c_field.name,
                    c_field.offset,
                    c_field.size,
                    if c_field.flexible { " (flexible)" } else { "" }
                )),
            }
        }
        for field in &layout.fields {
            if !covered.contains(field.c_name) {
                failures.push(format!(
                    "{}.{}: Rust field ({}+{}) has no C counterpart",
                    layout.c_name, field.c_name, field.offset, field.size
                ));
            }
        }
    }
}

/// Matches a C field that has no same-named, same-placed Rust field
/// against a documented rename: the Rust fields inside its bytes must be
/// allowed by the rename and tile those bytes exactly.
fn reconcile_rename(
    layout: &StructLayout,
    c_field: &CField,
) -> Result<(Vec<&'static str>, &'static str), String> {
    let rename = RENAMES
        .iter()
        .find(|rename| rename.c_struct == layout.c_name && rename.c_field == c_field.name)
        .ok_or("no Rust field with this name and place, and no documented rename")?;
    let start = c_field.offset;
    let end = c_field.offset + c_field.size;
    let inside: Vec<_> = layout
        .fields
        .iter()
        .filter(|field| field.offset >= start && field.offset + field.size <= end)
        .collect();
    let mut position = start;
    for field in &inside {
        if !rename.rust_fields.contains(&field.c_name) {
            return Err(format!("rename does not allow Rust field {}", field.c_name));
        }
        if field.offset != position {
            return Err(format!("gap or overlap before Rust field {}", field.c_name));
        }
        position = field.offset + field.size;
    }
    if inside.is_empty() || position != end {
        return Err(format!(
            "Rust fields {:?} do not cover bytes {start}..{end}",
            inside.iter().map(|field| field.c_name).collect::<Vec<_>>()
        ));
    }
    Ok((
        inside.iter().map(|field| field.c_name).collect(),
        rename.why,
    ))
}

fn compare_constants(
    scan: &Scan,
    constants: &[ConstantValue],
    output: &ProbeOutput,
    failures: &mut Vec<String>,
    absent: &mut BTreeSet<String>,
) {
    let rust_idents: BTreeSet<&str> = constants.iter().map(|constant| constant.ident).collect();
    let not_values: BTreeSet<&str> = NOT_VALUES.iter().map(|(name, _)| *name).collect();
    for ident in scan.macros.keys().chain(scan.enum_constants.iter()) {
        let ours = ["FUSE_", "FOPEN_", "FATTR_", "CUSE_"]
            .iter()
            .any(|prefix| ident.starts_with(prefix));
        if ours && !rust_idents.contains(ident.as_str()) && !not_values.contains(ident.as_str()) {
            failures.push(format!("header constant {ident} has no Rust counterpart"));
        }
    }
    for constant in constants {
        match output.constants.get(&constant.c_expr.replace(' ', "")) {
            Some(&value) if value == constant.value => {}
            Some(&value) => failures.push(format!(
                "{}: {value:#x} in C, {:#x} in Rust",
                constant.c_expr, constant.value
            )),
            None => {
                absent.insert(constant.ident.to_string());
            }
        }
    }
}

fn check_absent(minor: u32, absent: &BTreeSet<String>, failures: &mut Vec<String>) {
    let newer: BTreeSet<&str> = NEWER_THAN_7_38.iter().copied().collect();
    let late: BTreeSet<&str> = LATE_7_38.iter().copied().collect();
    for name in absent {
        let explained = minor < fuse_proto::KERNEL_MINOR_VERSION
            && (newer.contains(name.as_str()) || late.contains(name.as_str()));
        if !explained {
            failures.push(format!(
                "{name} is missing from this 7.{minor} header and is not a documented later addition"
            ));
        }
    }
    if minor == 38 {
        for name in &newer {
            if !absent.contains(*name) {
                failures.push(format!(
                    "{name} is listed as newer than 7.38 but this 7.38 header has it"
                ));
            }
        }
    }
}

/// Where the compiler and header are, and a scratch directory.
struct Setup {
    cc: String,
    header: PathBuf,
    dir: PathBuf,
}

impl Setup {
    fn find() -> Option<Setup> {
        let header = std::env::var_os("FUSE_PROTO_C_HEADER")
            .map(PathBuf::from)
            .unwrap_or_else(|| PathBuf::from("/usr/include/linux/fuse.h"));
        if !header.is_file() {
            println!(
                "SKIP: c_header_probe: {} not found (install linux-libc-dev or set FUSE_PROTO_C_HEADER)",
                header.display()
            );
            return None;
        }
        let cc = std::env::var("CC").unwrap_or_else(|_| "cc".to_string());
        if Command::new(&cc).arg("--version").output().is_err() {
            println!("SKIP: c_header_probe: no C compiler `{cc}` (install gcc or set CC)");
            return None;
        }
        let dir = std::env::temp_dir().join(format!(
            "fuse-proto-c-probe-{}-{}",
            std::process::id(),
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|elapsed| elapsed.as_nanos())
                .unwrap_or(0)
        ));
        std::fs::create_dir_all(&dir).expect("temporary directory can be created");
        Some(Setup { cc, header, dir })
    }

    fn includes(&self) -> String {
        format!(
            "#include <linux/ioctl.h>\n#include <linux/falloc.h>\n#include \"{}\"\n",
            self.header.display()
        )
    }

    fn scan(&self) -> Scan {
        let source = self.dir.join("scan.c");
        let preprocessed = self.dir.join("scan.i");
        std::fs::write(&source, self.includes()).expect("scan.c can be written");
        run(Command::new(&self.cc)
            .args(["-E", "-dD", "-o"])
            .arg(&preprocessed)
            .arg(&source));
        let text = std::fs::read_to_string(&preprocessed).expect("preprocessed output is readable");
        Scan::parse(&text, &self.header)
    }

    fn run_probe(
        &self,
        scan: &Scan,
        layouts: &[StructLayout],
        constants: &[ConstantValue],
    ) -> ProbeOutput {
        let mut program = String::from("#include <stdio.h>\n#include <stddef.h>\n");
        program.push_str(&self.includes());
        program.push_str("int main(void) {\n");
        for layout in layouts {
            let Some(fields) = scan.structs.get(layout.c_name) else {
                continue;
            };
            let name = layout.c_name;
            program.push_str(&format!(
                "  printf(\"struct {name} %zu\\n\", sizeof(struct {name}));\n"
            ));
            for (field, flexible) in fields {
                if *flexible {
                    program.push_str(&format!(
                        "  printf(\"flex {name} {field} %zu\\n\", offsetof(struct {name}, {field}));\n"
                    ));
                } else {
                    program.push_str(&format!(
                        "  printf(\"field {name} {field} %zu %zu\\n\", offsetof(struct {name}, {field}), \
                         sizeof(((struct {name} *)0)->{field}));\n"
                    ));
                }
            }
        }
        for constant in constants {
            if scan.has(constant.ident) {
                program.push_str(&format!(
                    "  printf(\"const {} %llu\\n\", (unsigned long long)({}));\n",
                    constant.c_expr.replace(' ', ""),
                    constant.c_expr
                ));
            }
        }
        program.push_str("  return 0;\n}\n");
        let source = self.dir.join("probe.c");
        let binary = self.dir.join("probe");
        std::fs::write(&source, program).expect("probe.c can be written");
        run(Command::new(&self.cc)
            .args(["-std=gnu11", "-O0", "-o"])
            .arg(&binary)
            .arg(&source));
        ProbeOutput::parse(&run(&mut Command::new(&binary)))
    }
}

impl Drop for Setup {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn run(command: &mut Command) -> String {
    let output = command.output().expect("command can be started");
    assert!(
        output.status.success(),
        "{command:?} failed:\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8(output.stdout).expect("output is UTF-8")
}

/// What the header declares, from its preprocessed text.
struct Scan {
    /// `fuse_*`/`cuse_*` structs with their fields (name, is flexible array).
    structs: BTreeMap<String, Vec<(String, bool)>>,
    /// Every macro the FUSE header defines, with its body.
    macros: BTreeMap<String, String>,
    /// Every macro defined by any included file (`<linux/falloc.h>` too).
    defined_anywhere: BTreeSet<String>,
    /// Enumerators declared by the header.
    enum_constants: BTreeSet<String>,
}

impl Scan {
    fn parse(text: &str, header: &Path) -> Scan {
        let mut macros = BTreeMap::new();
        let mut defined_anywhere = BTreeSet::new();
        let mut code = String::new();
        // Line markers (`# 12 "file"`) say which file the following lines
        // come from; only the FUSE header's own declarations count.
        let header_name = header.to_string_lossy();
        let mut in_header = false;
        for line in text.lines() {
            if let Some(marker) = line.strip_prefix("# ") {
                in_header = marker.contains(&*header_name);
                continue;
            }
            if let Some(definition) = line.strip_prefix("#define ") {
                let (name, body) = definition.split_once(' ').unwrap_or((definition, ""));
                let name = name.split('(').next().unwrap_or(name);
                defined_anywhere.insert(name.to_string());
                if in_header {
                    macros.insert(name.to_string(), body.to_string());
                }
            } else if in_header && !line.starts_with('#') {
                code.push_str(line);
                code.push('\n');
            }
        }
        let tokens = tokenize(&code);
        let mut structs = BTreeMap::new();
        let mut enum_constants = BTreeSet::new();
        let mut index = 0;
        while index < tokens.len() {
            let keyword = tokens[index].as_str();
            if keyword == "struct"
                && tokens.get(index + 2).map(String::as_str) == Some("{")
                && let Some(name) = tokens.get(index + 1)
            {
                let (body, end) = braced(&tokens, index + 2);
                structs.insert(name.clone(), struct_fields(body));
                index = end;
            } else if keyword == "enum" {
                let open = tokens[index..].iter().position(|token| token == "{");
                if let Some(open) = open {
                    let (body, end) = braced(&tokens, index + open);
                    for item in body.split(|token| token == ",") {
                        if let Some(first) = item.first() {
                            enum_constants.insert(first.clone());
                        }
                    }
                    index = end;
                }
            }
            index += 1;
        }
        structs.retain(|name: &String, _| name.starts_with("fuse_") || name.starts_with("cuse_"));
        Scan {
            structs,
            macros,
            defined_anywhere,
            enum_constants,
        }
    }

    fn has(&self, ident: &str) -> bool {
        self.defined_anywhere.contains(ident) || self.enum_constants.contains(ident)
    }
}

/// Splits C code into identifiers, numbers and single punctuation characters.
fn tokenize(code: &str) -> Vec<String> {
    let mut tokens = Vec::new();
    let mut chars = code.chars().peekable();
    while let Some(&c) = chars.peek() {
        if c.is_whitespace() {
            chars.next();
        } else if c.is_alphanumeric() || c == '_' {
            let mut word = String::new();
            while let Some(&c) = chars.peek().filter(|c| c.is_alphanumeric() || **c == '_') {
                word.push(c);
                chars.next();
            }
            tokens.push(word);
        } else {
            tokens.push(c.to_string());
            chars.next();
        }
    }
    tokens
}

/// The tokens between the brace at `open` and its match, and the match's index.
fn braced(tokens: &[String], open: usize) -> (&[String], usize) {
    let mut depth = 0usize;
    for (index, token) in tokens.iter().enumerate().skip(open) {
        match token.as_str() {
            "{" => depth += 1,
            "}" => {
                depth -= 1;
                if depth == 0 {
                    return (&tokens[open + 1..index], index);
                }
            }
            _ => {}
        }
    }
    panic!("unbalanced braces in the header");
}

/// Field names of a struct body: the last identifier of each declaration
/// outside array bounds, flagged when the bounds are empty (`name[]`).
fn struct_fields(body: &[String]) -> Vec<(String, bool)> {
    body.split(|token| token == ";")
        .filter(|declaration| !declaration.is_empty())
        .map(|declaration| {
            let bracket = declaration
                .iter()
                .position(|token| token == "[")
                .unwrap_or(declaration.len());
            let name = declaration[..bracket]
                .iter()
                .rev()
                .find(|token| token.starts_with(|c: char| c.is_alphabetic() || c == '_'))
                .expect("a declaration names its field")
                .clone();
            let flexible = declaration.get(bracket + 1).map(String::as_str) == Some("]");
            (name, flexible)
        })
        .collect()
}

struct CStruct {
    size: usize,
    fields: Vec<CField>,
}

struct CField {
    name: String,
    offset: usize,
    size: usize,
    flexible: bool,
}

/// What the compiled probe printed.
struct ProbeOutput {
    structs: BTreeMap<String, CStruct>,
    constants: BTreeMap<String, u64>,
}

impl ProbeOutput {
    fn parse(text: &str) -> ProbeOutput {
        let mut structs: BTreeMap<String, CStruct> = BTreeMap::new();
        let mut constants = BTreeMap::new();
        let number = |word: Option<&str>| -> usize {
            word.and_then(|word| word.parse().ok())
                .expect("probe prints numbers")
        };
        for line in text.lines() {
            let mut words = line.split(' ');
            match words.next() {
                Some("struct") => {
                    let name = words.next().expect("struct name").to_string();
                    let size = number(words.next());
                    structs.insert(
                        name,
                        CStruct {
                            size,
                            fields: Vec::new(),
                        },
                    );
                }
                Some(kind @ ("field" | "flex")) => {
                    let owner = words.next().expect("struct name");
                    let name = words.next().expect("field name").to_string();
                    let offset = number(words.next());
                    let flexible = kind == "flex";
                    let size = if flexible { 0 } else { number(words.next()) };
                    structs
                        .get_mut(owner)
                        .expect("fields follow their struct")
                        .fields
                        .push(CField {
                            name,
                            offset,
                            size,
                            flexible,
                        });
                }
                Some("const") => {
                    let expr = words.next().expect("constant expression").to_string();
                    let value = words
                        .next()
                        .and_then(|word| word.parse().ok())
                        .expect("constant value");
                    constants.insert(expr, value);
                }
                _ => panic!("unexpected probe output line {line:?}"),
            }
        }
        ProbeOutput { structs, constants }
    }
}
