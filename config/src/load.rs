//! Reading a base file and drop-ins, merging them, and locating every finding in the file
//! and line it came from.

use std::collections::HashMap;

use toml::{Table, Value};

use crate::finding::{path_text, with_index, Finding, Raw, Seg, Severity};
use crate::model::Config;
use crate::validate::validate;

/// A source file.
#[derive(Debug)]
struct Source {
    name: String,
    text: String,
    doc: Option<toml_edit::Document<String>>,
}

/// The result of loading: the merged, defaulted configuration if there were no errors, and
/// every finding.
#[derive(Debug)]
pub struct Loaded {
    /// The configuration, when it has no errors.
    pub config: Option<Config>,
    /// All findings, errors first, then in file order.
    pub findings: Vec<Finding>,
}

impl Loaded {
    /// Whether any finding is an error.
    pub fn has_errors(&self) -> bool {
        self.findings.iter().any(|f| f.severity == Severity::Error)
    }
}

/// Arrays of tables merged by an identifying key rather than replaced.
fn identity_key(parent: &[Seg]) -> Option<&'static str> {
    match parent {
        [Seg::Key(k)] if k == "slot" => Some("name"),
        [Seg::Key(k)] if k == "file" => Some("class"),
        [Seg::Key(t), Seg::Key(k)] if t == "trust" && k == "key" => Some("id"),
        _ => None,
    }
}

/// Where each part of the merged configuration came from: file index and the path in
/// that file.
type Origins = HashMap<Vec<Seg>, (usize, Vec<Seg>)>;

fn record(origins: &mut Origins, merged: &[Seg], file: usize, local: &[Seg], value: &Value) {
    origins.insert(merged.to_vec(), (file, local.to_vec()));
    match value {
        Value::Table(t) => {
            for (k, v) in t {
                let mut m = merged.to_vec();
                m.push(Seg::Key(k.clone()));
                let mut l = local.to_vec();
                l.push(Seg::Key(k.clone()));
                record(origins, &m, file, &l, v);
            }
        }
        Value::Array(a) => {
            for (i, v) in a.iter().enumerate() {
                let mut m = merged.to_vec();
                m.push(Seg::Index(i));
                let mut l = local.to_vec();
                l.push(Seg::Index(i));
                record(origins, &m, file, &l, v);
            }
        }
        _ => {}
    }
}

fn merge(into: &mut Table, from: &Table, at: &[Seg], file: usize, origins: &mut Origins) {
    for (k, v) in from {
        let mut p = at.to_vec();
        p.push(Seg::Key(k.clone()));
        match (into.get_mut(k), v) {
            (Some(Value::Table(dst)), Value::Table(src)) => {
                origins.entry(p.clone()).or_insert((file, p.clone()));
                merge(dst, src, &p, file, origins);
            }
            (Some(Value::Array(dst)), Value::Array(src)) if identity_key(&p).is_some() => {
                let id = identity_key(&p).unwrap_or("name");
                for (j, item) in src.iter().enumerate() {
                    let local = with_index(p.clone(), j, "");
                    let key = item.get(id).cloned();
                    let existing = key
                        .as_ref()
                        .and_then(|key| dst.iter().position(|d| d.get(id) == Some(key)));
                    match (existing, item, existing.and_then(|i| dst.get_mut(i))) {
                        (Some(i), Value::Table(src_t), Some(Value::Table(dst_t))) => {
                            let merged = with_index(p.clone(), i, "");
                            for (kk, vv) in src_t {
                                dst_t.insert(kk.clone(), vv.clone());
                                let mut m = merged.clone();
                                m.push(Seg::Key(kk.clone()));
                                let mut l = local.clone();
                                l.push(Seg::Key(kk.clone()));
                                record(origins, &m, file, &l, vv);
                            }
                        }
                        _ => {
                            let merged = with_index(p.clone(), dst.len(), "");
                            record(origins, &merged, file, &local, item);
                            dst.push(item.clone());
                        }
                    }
                }
            }
            _ => {
                // Drop the old origins below this key, then take the new value whole.
                origins.retain(|o, _| !o.starts_with(&p));
                record(origins, &p, file, &p, v);
                into.insert(k.clone(), v.clone());
            }
        }
    }
}

fn line_col(text: &str, offset: usize) -> (usize, usize) {
    line_col_in(text, &line_starts(text), offset)
}

/// Where each line of `text` starts: made once per file, so that locating many findings
/// costs each one a search, not a scan of the text before it.
fn line_starts(text: &str) -> Vec<usize> {
    std::iter::once(0)
        .chain(text.match_indices('\n').map(|(i, _)| i + 1))
        .collect()
}

fn line_col_in(text: &str, starts: &[usize], offset: usize) -> (usize, usize) {
    let mut offset = offset.min(text.len());
    while !text.is_char_boundary(offset) {
        offset -= 1;
    }
    let line = starts.partition_point(|&s| s <= offset).max(1);
    let start = starts[line - 1];
    let col = text[start..offset].chars().count() + 1;
    (line, col)
}

#[derive(Clone, Copy)]
enum Node<'a> {
    Item(&'a toml_edit::Item),
    Table(&'a toml_edit::Table),
    Value(&'a toml_edit::Value),
}

impl<'a> Node<'a> {
    fn span(self) -> Option<std::ops::Range<usize>> {
        match self {
            Node::Item(toml_edit::Item::Value(v)) | Node::Value(v) => v.span(),
            Node::Item(toml_edit::Item::Table(t)) | Node::Table(t) => t.span(),
            Node::Item(toml_edit::Item::ArrayOfTables(a)) => a.span(),
            Node::Item(toml_edit::Item::None) => None,
        }
    }

    /// The child `k`, and the span of the key itself.
    fn key(self, k: &str) -> Option<(Node<'a>, Option<std::ops::Range<usize>>)> {
        let table: Option<&'a dyn toml_edit::TableLike> = match self {
            Node::Item(i) => i.as_table_like(),
            Node::Table(t) => Some(t),
            Node::Value(toml_edit::Value::InlineTable(t)) => Some(t),
            Node::Value(_) => None,
        };
        let (key, item) = table?.get_key_value(k)?;
        Some((Node::Item(item), key.span()))
    }

    fn index(self, i: usize) -> Option<Node<'a>> {
        match self {
            Node::Item(toml_edit::Item::ArrayOfTables(a)) => a.get(i).map(Node::Table),
            Node::Item(toml_edit::Item::Value(toml_edit::Value::Array(a)))
            | Node::Value(toml_edit::Value::Array(a)) => a.get(i).map(Node::Value),
            _ => None,
        }
    }
}

/// The byte span of `local` in a parsed document: the key itself with `at_key`, else its
/// value; the nearest existing ancestor when the path is absent.
fn span_of(
    doc: &toml_edit::Document<String>,
    local: &[Seg],
    at_key: bool,
) -> Option<std::ops::Range<usize>> {
    let mut node = Node::Item(doc.as_item());
    let mut best = None;
    for (n, seg) in local.iter().enumerate() {
        let last = n + 1 == local.len();
        let next = match seg {
            Seg::Key(k) => match node.key(k) {
                Some((_, key_span)) if last && at_key => return key_span.or(best),
                Some((child, _)) => Some(child),
                None => None,
            },
            Seg::Index(i) => node.index(*i),
        };
        match next {
            Some(child) => {
                best = child.span().or(best);
                node = child;
            }
            None => return best,
        }
    }
    best
}

/// Load a configuration from named sources: the base first, then the drop-ins (applied in
/// the order given; [`load_files`] sorts them lexically).
pub fn load_sources(sources: &[(String, String)]) -> Loaded {
    if sources.is_empty() {
        return Loaded {
            config: None,
            findings: vec![Finding {
                severity: Severity::Error,
                file: String::new(),
                line: 1,
                column: 1,
                path: String::new(),
                message: "no configuration file was given".to_string(),
            }],
        };
    }
    let mut srcs: Vec<Source> = Vec::new();
    let mut findings = Vec::new();
    let mut tables = Vec::new();
    for (name, text) in sources {
        // A syntax error, located where the parser stopped.
        let syntax = |span: Option<std::ops::Range<usize>>, message: &str| {
            let (line, column) = span.map_or((1, 1), |s| line_col(text, s.start));
            Finding {
                severity: Severity::Error,
                file: name.clone(),
                line,
                column,
                path: String::new(),
                message: message.trim().to_string(),
            }
        };
        let doc = match toml_edit::Document::parse(text.clone()) {
            Ok(doc) => {
                match toml::from_str::<Table>(text) {
                    Ok(t) => tables.push(t),
                    Err(e) => findings.push(syntax(e.span(), e.message())),
                }
                Some(doc)
            }
            Err(e) => {
                findings.push(syntax(e.span(), e.message()));
                None
            }
        };
        srcs.push(Source {
            name: name.clone(),
            text: text.clone(),
            doc,
        });
    }
    if !findings.is_empty() {
        return Loaded {
            config: None,
            findings,
        };
    }
    let mut origins = Origins::new();
    let mut merged = Table::new();
    for (i, t) in tables.iter().enumerate() {
        if i == 0 {
            record(&mut origins, &[], 0, &[], &Value::Table(t.clone()));
            merged = t.clone();
        } else {
            merge(&mut merged, t, &[], i, &mut origins);
        }
    }

    // The shape first, all of it: unknown keys, missing fields, wrong types.
    let mut raws = crate::schema::check(&merged);
    let mut known = merged.clone();
    // What has the wrong type goes (a missing key's finding is at its table: that stays).
    for r in raws.iter().filter(|r| !r.message.starts_with("missing `")) {
        remove_path(&mut known, &r.path);
    }
    // Every finding at once: what is missing is stood in for, so the value rules run on
    // everything that is there; findings about the stand-ins are the shape's already.
    let filled = crate::schema::fill_required(&mut known);
    let mut config = None;
    match serde_path_to_error::deserialize::<_, Config>(Value::Table(known)) {
        Ok(c) => {
            let stand_in = |r: &Raw| filled.iter().any(|p| r.path.starts_with(p));
            raws.extend(validate(&c, &filled).into_iter().filter(|r| !stand_in(r)));
            config = Some(c);
        }
        Err(e) if raws.is_empty() => {
            let p = parse_serde_path(&e.path().to_string());
            raws.push(Raw::error(p, e.inner().message().trim().to_string()));
        }
        Err(_) => {}
    }
    let starts: Vec<Vec<usize>> = srcs.iter().map(|s| line_starts(&s.text)).collect();
    let mut findings: Vec<Finding> = raws
        .into_iter()
        .map(|r| {
            // The nearest ancestor with a known origin names the file.
            let mut probe = r.path.clone();
            let (file, local) = loop {
                if let Some(o) = origins.get(&probe) {
                    break o.clone();
                }
                if probe.pop().is_none() {
                    break (0, Vec::new());
                }
            };
            let mut local = local;
            local.extend(r.path[probe.len()..].iter().cloned());
            let src = &srcs[file.min(srcs.len().saturating_sub(1))];
            let (line, column) = src
                .doc
                .as_ref()
                .and_then(|d| span_of(d, &local, r.at_key))
                .map_or((1, 1), |s| {
                    line_col_in(&src.text, &starts[file.min(starts.len() - 1)], s.start)
                });
            Finding {
                severity: r.severity,
                file: src.name.clone(),
                line,
                column,
                path: path_text(&r.path),
                message: r.message,
            }
        })
        .collect();
    findings.sort_by(|a, b| {
        (a.severity, &a.file, a.line, a.column).cmp(&(b.severity, &b.file, b.line, b.column))
    });
    if findings.iter().any(|f| f.severity == Severity::Error) {
        config = None;
    }
    Loaded { config, findings }
}

fn remove_path(t: &mut Table, p: &[Seg]) {
    match p {
        [Seg::Key(k)] => {
            t.remove(k);
        }
        [Seg::Key(k), rest @ ..] => match (t.get_mut(k), rest) {
            (Some(Value::Table(sub)), _) => remove_path(sub, rest),
            // An item of the wrong type becomes an empty table (its fields are then
            // stood in for): removing it would renumber the items after it.
            (Some(Value::Array(a)), [Seg::Index(i)]) => {
                if let Some(item) = a.get_mut(*i) {
                    *item = Value::Table(Table::new());
                }
            }
            (Some(Value::Array(a)), [Seg::Index(i), tail @ ..]) => {
                if let Some(Value::Table(sub)) = a.get_mut(*i) {
                    remove_path(sub, tail);
                }
            }
            _ => {}
        },
        _ => {}
    }
}

fn parse_serde_path(s: &str) -> Vec<Seg> {
    let mut out = Vec::new();
    for part in s.split('.') {
        if part == "?" || part.is_empty() {
            continue;
        }
        let (name, rest) = part.split_once('[').map_or((part, ""), |(n, r)| (n, r));
        if !name.is_empty() {
            out.push(Seg::Key(name.to_string()));
        }
        for idx in rest.split('[') {
            if let Ok(i) = idx.trim_end_matches(']').parse() {
                out.push(Seg::Index(i));
            }
        }
    }
    out
}

/// The largest configuration file read (a description is a few KiB).
pub const MAX_CONFIG_SIZE: u64 = 4 << 20;

/// Read one configuration file as text, at most [`MAX_CONFIG_SIZE`] bytes: a device such
/// as /dev/zero, or a file that is not text, is an error naming the file, never a read
/// without end.
pub fn read_source(path: &std::path::Path) -> std::io::Result<String> {
    use std::io::Read;
    let named =
        |e: std::io::Error| std::io::Error::new(e.kind(), format!("{}: {e}", path.display()));
    let f = std::fs::File::open(path).map_err(named)?;
    let mut b = Vec::new();
    f.take(MAX_CONFIG_SIZE + 1)
        .read_to_end(&mut b)
        .map_err(named)?;
    if b.len() as u64 > MAX_CONFIG_SIZE {
        return Err(named(std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            format!("larger than {MAX_CONFIG_SIZE} bytes: not a configuration file"),
        )));
    }
    String::from_utf8(b).map_err(|_| {
        named(std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            "not UTF-8 text",
        ))
    })
}

/// Load a base file and drop-ins (applied in lexical order of their file names).
pub fn load_files(
    base: &std::path::Path,
    dropins: &[std::path::PathBuf],
) -> std::io::Result<Loaded> {
    let mut files = vec![base.to_path_buf()];
    let mut d = dropins.to_vec();
    d.sort_by(|a, b| a.file_name().cmp(&b.file_name()));
    files.extend(d);
    let mut sources = Vec::new();
    for f in files {
        sources.push((f.display().to_string(), read_source(&f)?));
    }
    Ok(load_sources(&sources))
}

/// Load the JSON form, checked as strictly as TOML: unknown keys, types and every
/// cross-field rule. Findings carry the path; syntax and type errors also their line and
/// column.
pub fn load_json(name: &str, text: &str) -> Loaded {
    let de = &mut serde_json::Deserializer::from_str(text);
    match serde_path_to_error::deserialize::<_, Config>(de) {
        Ok(c) => {
            let mut findings: Vec<Finding> = validate(&c, &[])
                .into_iter()
                .map(|r| Finding {
                    severity: r.severity,
                    file: name.to_string(),
                    line: 1,
                    column: 1,
                    path: path_text(&r.path),
                    message: r.message,
                })
                .collect();
            findings.sort_by(|a, b| (a.severity, &a.path).cmp(&(b.severity, &b.path)));
            let config = (!findings.iter().any(|f| f.severity == Severity::Error)).then_some(c);
            Loaded { config, findings }
        }
        Err(e) => {
            let path = e.path().to_string();
            let inner = e.into_inner();
            Loaded {
                config: None,
                findings: vec![Finding {
                    severity: Severity::Error,
                    file: name.to_string(),
                    line: inner.line(),
                    column: inner.column(),
                    path: if path == "." { String::new() } else { path },
                    message: inner.to_string(),
                }],
            }
        }
    }
}
