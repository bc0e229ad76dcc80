//! Table-driven check of every struct layout against the 7.45 reference
//! listing (`tests/fixtures/layout-7.45.txt`, gcc `offsetof` on the 7.45
//! header), independent of the system's older `<linux/fuse.h>`. This is
//! where the 7.39–7.45 additions (statx, io_uring, backing map, prune,
//! copy_file_range_out, the new `fuse_init_out`/`fuse_open_out` fields) are
//! checked field by field.

mod common;

use std::collections::{BTreeMap, BTreeSet};

use common::{FieldLayout, StructLayout, struct_layouts};

/// Structs the reference listing leaves out. They are unchanged since long
/// before 7.38, so the C probe checks them against the system header.
const NOT_IN_REFERENCE_LISTING: &[&str] = &[
    "fuse_mknod_in",
    "fuse_mkdir_in",
    "fuse_rename_in",
    "fuse_rename2_in",
    "fuse_link_in",
    "cuse_init_in",
    "cuse_init_out",
    "fuse_ioctl_iovec",
    "fuse_setupmapping_in",
    "fuse_removemapping_in",
    "fuse_removemapping_one",
];

struct ReferenceStruct {
    size: usize,
    fields: Vec<FieldLayout>,
}

fn parse_number(text: &str, line: &str) -> usize {
    text.trim()
        .parse()
        .unwrap_or_else(|_| panic!("bad number {text:?} in {line:?}"))
}

/// A C declarator without array bounds: `unused[11]` → `unused`.
fn field_name(declarator: &str) -> &'static str {
    let name = declarator.split('[').next().unwrap_or(declarator).trim();
    let name = name.rsplit(' ').next().unwrap_or(name);
    Box::leak(name.to_string().into_boxed_str())
}

fn parse_reference(text: &str) -> BTreeMap<String, ReferenceStruct> {
    let mut structs = BTreeMap::new();
    let mut current: Option<String> = None;
    for line in text.lines().filter(|line| !line.starts_with('#')) {
        if let Some(rest) = line.strip_prefix("struct ") {
            let (name, size) = rest
                .split_once(": size ")
                .unwrap_or_else(|| panic!("bad struct line {line:?}"));
            structs.insert(
                name.to_string(),
                ReferenceStruct {
                    size: parse_number(size, line),
                    fields: Vec::new(),
                },
            );
            current = Some(name.to_string());
            continue;
        }
        let name = current
            .as_ref()
            .unwrap_or_else(|| panic!("field line before any struct: {line:?}"));
        let entry = structs.get_mut(name).expect("current struct was inserted");
        for item in line
            .split(';')
            .map(str::trim)
            .filter(|item| !item.is_empty())
        {
            let field = if let Some(declaration) = item.strip_suffix("[flex]") {
                let (offset, declarator) = declaration
                    .split_once(':')
                    .unwrap_or_else(|| panic!("bad flexible member {item:?}"));
                FieldLayout {
                    c_name: field_name(declarator),
                    offset: parse_number(offset, line),
                    size: 0,
                    flexible: true,
                }
            } else {
                let (place, declarator) = item
                    .split_once(' ')
                    .unwrap_or_else(|| panic!("bad field {item:?}"));
                let (offset, size) = place
                    .split_once('+')
                    .unwrap_or_else(|| panic!("bad field place {item:?}"));
                FieldLayout {
                    c_name: field_name(declarator),
                    offset: parse_number(offset, line),
                    size: parse_number(size, line),
                    flexible: false,
                }
            };
            entry.fields.push(field);
        }
    }
    structs
}

fn reference() -> BTreeMap<String, ReferenceStruct> {
    let path = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/fixtures/layout-7.45.txt"
    );
    let text = std::fs::read_to_string(path).expect("layout fixture is readable");
    parse_reference(&text)
}

#[test]
fn every_reference_struct_matches_the_rust_definition() {
    let reference = reference();
    let rust: BTreeMap<&str, StructLayout> = struct_layouts()
        .into_iter()
        .map(|layout| (layout.c_name, layout))
        .collect();
    let mut mismatches = Vec::new();
    for (name, expected) in &reference {
        let Some(actual) = rust.get(name.as_str()) else {
            mismatches.push(format!("{name}: no Rust struct"));
            continue;
        };
        if actual.size != expected.size {
            mismatches.push(format!(
                "{name}: size {} in Rust, {} in the reference",
                actual.size, expected.size
            ));
        }
        if actual.fields != expected.fields {
            mismatches.push(format!(
                "{name} ({}): fields differ\n  Rust:      {:?}\n  reference: {:?}",
                actual.rust_name, actual.fields, expected.fields
            ));
        }
    }
    assert!(mismatches.is_empty(), "{}", mismatches.join("\n"));
    assert!(
        reference.len() >= 60,
        "the fixture lost structs: {}",
        reference.len()
    );
}

#[test]
fn every_rust_struct_is_in_the_reference_or_explicitly_left_to_the_c_probe() {
    let reference = reference();
    let listed: BTreeSet<&str> = NOT_IN_REFERENCE_LISTING.iter().copied().collect();
    for layout in struct_layouts() {
        let in_reference = reference.contains_key(layout.c_name);
        let excused = listed.contains(layout.c_name);
        assert!(
            in_reference != excused,
            "{}: in reference {in_reference}, in NOT_IN_REFERENCE_LISTING {excused}",
            layout.c_name
        );
    }
}

/// The layout table must cover every struct the library defines, so that
/// neither check can silently miss one.
#[test]
fn the_layout_table_covers_every_abi_struct() {
    let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/src/abi");
    let mut defined = BTreeSet::new();
    for entry in std::fs::read_dir(dir).expect("src/abi is readable") {
        let source = std::fs::read_to_string(entry.expect("directory entry").path())
            .expect("source file is readable");
        for line in source.lines() {
            if let Some(rest) = line.strip_prefix("pub struct ") {
                let name: String = rest
                    .chars()
                    .take_while(|c| c.is_alphanumeric() || *c == '_')
                    .collect();
                defined.insert(name);
            }
        }
    }
    let tabled: BTreeSet<String> = struct_layouts()
        .iter()
        .map(|layout| layout.rust_name.to_string())
        .collect();
    assert_eq!(defined, tabled);
}

#[test]
fn the_7_38_to_7_45_field_changes_are_where_the_reference_says() {
    let reference = reference();
    let open_out = &reference["fuse_open_out"];
    assert_eq!(
        open_out.fields.last(),
        Some(&FieldLayout {
            c_name: "backing_id",
            offset: 12,
            size: 4,
            flexible: false
        })
    );
    let init_out = &reference["fuse_init_out"];
    let tail: Vec<_> = init_out
        .fields
        .iter()
        .filter(|field| field.offset >= 36)
        .map(|field| (field.c_name, field.offset, field.size))
        .collect();
    assert_eq!(
        tail,
        [
            ("max_stack_depth", 36, 4),
            ("request_timeout", 40, 2),
            ("unused", 42, 22)
        ]
    );
}
