//! JSON-with-comments support: a pre-pass that blanks comments and trailing
//! commas so serde_json can parse the result, and a span scanner used to edit
//! one member of a JSONC document in place.
//!
//! The pre-pass replaces every removed byte with a space (newlines are kept),
//! so byte offsets in the cleaned text are offsets in the original file: edits
//! found on the cleaned text apply to the original bytes and every comment
//! and blank elsewhere in the file survives. This module must never change a
//! byte outside the span being edited.

/// Blank `//` and `/* */` comments and trailing commas. Same length as input.
pub fn strip(src: &str) -> String {
    let b = src.as_bytes();
    let mut out = b.to_vec();
    let mut i = 0;
    // Position of the last comma seen outside strings, if only whitespace
    // (or blanked comments) followed it since.
    let mut pending_comma: Option<usize> = None;
    while i < b.len() {
        match b[i] {
            b'"' => {
                pending_comma = None;
                i += 1;
                while i < b.len() {
                    match b[i] {
                        b'\\' => i += 2,
                        b'"' => {
                            i += 1;
                            break;
                        }
                        _ => i += 1,
                    }
                }
                continue;
            }
            b'/' if b.get(i + 1) == Some(&b'/') => {
                while i < b.len() && b[i] != b'\n' {
                    out[i] = b' ';
                    i += 1;
                }
                continue;
            }
            b'/' if b.get(i + 1) == Some(&b'*') => {
                out[i] = b' ';
                out[i + 1] = b' ';
                i += 2;
                while i < b.len() && !(b[i] == b'*' && b.get(i + 1) == Some(&b'/')) {
                    if b[i] != b'\n' {
                        out[i] = b' ';
                    }
                    i += 1;
                }
                for _ in 0..2 {
                    if i < b.len() {
                        out[i] = b' ';
                        i += 1;
                    }
                }
                continue;
            }
            b',' => pending_comma = Some(i),
            b'}' | b']' => {
                if let Some(c) = pending_comma.take() {
                    out[c] = b' ';
                }
            }
            c if c.is_ascii_whitespace() => {}
            _ => pending_comma = None,
        }
        i += 1;
    }
    // Only ASCII bytes were written over whole comment/comma bytes, but a
    // multi-byte char inside a comment is blanked byte by byte, which keeps
    // the text valid UTF-8 (all spaces).
    String::from_utf8(out).expect("blanking keeps UTF-8 valid")
}

/// One member of a JSON object, as byte offsets into the text.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Member {
    pub key: String,
    pub key_start: usize,
    pub value_start: usize,
    pub value_end: usize,
}

/// A JSON object's extent and members.
#[derive(Debug, Clone)]
pub struct ObjectSpan {
    pub open: usize,
    pub close: usize,
    pub members: Vec<Member>,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("invalid JSON at byte {0}")]
pub struct SpanError(pub usize);

fn ws(b: &[u8], mut i: usize) -> usize {
    while i < b.len() && b[i].is_ascii_whitespace() {
        i += 1;
    }
    i
}

fn string_end(b: &[u8], i: usize) -> Result<usize, SpanError> {
    if b.get(i) != Some(&b'"') {
        return Err(SpanError(i));
    }
    let mut j = i + 1;
    while j < b.len() {
        match b[j] {
            b'\\' => j += 2,
            b'"' => return Ok(j + 1),
            _ => j += 1,
        }
    }
    Err(SpanError(i))
}

/// End offset of the value starting at (or after whitespace from) `i`.
fn value_end(b: &[u8], i: usize) -> Result<usize, SpanError> {
    let i = ws(b, i);
    match b.get(i) {
        Some(b'"') => string_end(b, i),
        Some(b'{') => Ok(object_at(b, i)?.close + 1),
        Some(b'[') => {
            let mut j = ws(b, i + 1);
            if b.get(j) == Some(&b']') {
                return Ok(j + 1);
            }
            loop {
                j = ws(b, value_end(b, j)?);
                match b.get(j) {
                    Some(b',') => j += 1,
                    Some(b']') => return Ok(j + 1),
                    _ => return Err(SpanError(j)),
                }
            }
        }
        Some(_) => {
            let mut j = i;
            while j < b.len() && !matches!(b[j], b',' | b'}' | b']') && !b[j].is_ascii_whitespace() {
                j += 1;
            }
            if j == i {
                Err(SpanError(i))
            } else {
                Ok(j)
            }
        }
        None => Err(SpanError(i)),
    }
}

fn object_at(b: &[u8], open: usize) -> Result<ObjectSpan, SpanError> {
    if b.get(open) != Some(&b'{') {
        return Err(SpanError(open));
    }
    let mut members = Vec::new();
    let mut j = ws(b, open + 1);
    if b.get(j) == Some(&b'}') {
        return Ok(ObjectSpan { open, close: j, members });
    }
    loop {
        let key_start = j;
        let key_end = string_end(b, j)?;
        let key: String = serde_json::from_slice(&b[key_start..key_end]).map_err(|_| SpanError(key_start))?;
        j = ws(b, key_end);
        if b.get(j) != Some(&b':') {
            return Err(SpanError(j));
        }
        let value_start = ws(b, j + 1);
        let end = value_end(b, value_start)?;
        members.push(Member {
            key,
            key_start,
            value_start,
            value_end: end,
        });
        j = ws(b, end);
        match b.get(j) {
            Some(b',') => j = ws(b, j + 1),
            Some(b'}') => return Ok(ObjectSpan { open, close: j, members }),
            _ => return Err(SpanError(j)),
        }
    }
}

/// The object at `path` (keys from the root object) in cleaned text.
/// `Ok(None)` when some key is missing or not an object.
pub fn object_at_path(clean: &str, path: &[String]) -> Result<Option<ObjectSpan>, SpanError> {
    let b = clean.as_bytes();
    let mut obj = object_at(b, ws(b, 0))?;
    for k in path {
        let Some(m) = obj.members.iter().find(|m| &m.key == k) else {
            return Ok(None);
        };
        if b.get(m.value_start) != Some(&b'{') {
            return Ok(None);
        }
        obj = object_at(b, m.value_start)?;
    }
    Ok(Some(obj))
}

/// Remove member `name` from the object at `path`. Returns the new text and
/// the removed member's value text, or `None` if there is no such member.
pub fn remove_member(orig: &str, path: &[String], name: &str) -> Result<Option<(String, String)>, SpanError> {
    let clean = strip(orig);
    let Some(obj) = object_at_path(&clean, path)? else {
        return Ok(None);
    };
    let Some(idx) = obj.members.iter().position(|m| m.key == name) else {
        return Ok(None);
    };
    let m = &obj.members[idx];
    let (from, to) = if let Some(next) = obj.members.get(idx + 1) {
        (m.key_start, next.key_start)
    } else if idx > 0 {
        (obj.members[idx - 1].value_end, m.value_end)
    } else {
        (m.key_start, m.value_end)
    };
    let value = clean[m.value_start..m.value_end].to_string();
    let mut out = String::with_capacity(orig.len());
    out.push_str(&orig[..from]);
    out.push_str(&orig[to..]);
    Ok(Some((out, value)))
}

/// Set `key` to the raw JSON `value` in the object at `path` (which must
/// exist), replacing an existing value or inserting a first member.
pub fn set_member(orig: &str, path: &[String], key: &str, value: &str) -> Result<Option<String>, SpanError> {
    let clean = strip(orig);
    let Some(obj) = object_at_path(&clean, path)? else {
        return Ok(None);
    };
    let key_json = serde_json::to_string(key).expect("string serialises");
    let mut out = String::with_capacity(orig.len() + key.len() + value.len() + 8);
    if let Some(m) = obj.members.iter().find(|m| m.key == key) {
        out.push_str(&orig[..m.value_start]);
        out.push_str(value);
        out.push_str(&orig[m.value_end..]);
    } else if let Some(first) = obj.members.first() {
        let indent = indent_before(&clean, first.key_start);
        out.push_str(&orig[..first.key_start]);
        out.push_str(&format!("{key_json}: {value},"));
        match indent {
            Some(ind) => {
                out.push('\n');
                out.push_str(ind);
            }
            None => out.push(' '),
        }
        out.push_str(&orig[first.key_start..]);
    } else {
        out.push_str(&orig[..obj.open + 1]);
        out.push_str(&format!("{key_json}: {value}"));
        out.push_str(&orig[obj.open + 1..]);
    }
    Ok(Some(out))
}

/// Add member `name` with raw JSON `value` at the end of the object at
/// `path`, creating missing parent objects. Replaces an existing member.
pub fn insert_member(orig: &str, path: &[String], name: &str, value: &str) -> Result<String, SpanError> {
    let clean = strip(orig);
    let Some(obj) = object_at_path(&clean, path)? else {
        let (last, parent) = path.split_last().expect("root always exists");
        let with_parent = insert_member(orig, parent, last, "{}")?;
        return insert_member(&with_parent, path, name, value);
    };
    if obj.members.iter().any(|m| m.key == name) {
        return Ok(set_member(orig, path, name, value)?.expect("object exists"));
    }
    let key_json = serde_json::to_string(name).expect("string serialises");
    let mut out = String::with_capacity(orig.len() + name.len() + value.len() + 8);
    if let Some(last) = obj.members.last() {
        let indent = indent_before(&clean, last.key_start).unwrap_or(" ");
        out.push_str(&orig[..last.value_end]);
        out.push_str(&format!(",\n{indent}{key_json}: {value}"));
        out.push_str(&orig[last.value_end..]);
    } else {
        out.push_str(&orig[..obj.open + 1]);
        out.push_str(&format!("{key_json}: {value}"));
        out.push_str(&orig[obj.open + 1..]);
    }
    Ok(out)
}

/// The run of spaces/tabs before `at` if it starts a line.
fn indent_before(clean: &str, at: usize) -> Option<&str> {
    let line_start = clean[..at].rfind('\n').map(|i| i + 1)?;
    let ind = &clean[line_start..at];
    ind.bytes().all(|c| c == b' ' || c == b'\t').then_some(ind)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(a: &[&str]) -> Vec<String> {
        a.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn strip_keeps_offsets_and_strings() {
        let src = "{\n // c \"x\"\n \"a\": \"//not a comment\", /* b\n c */ \"b\": [1,2,],\n}";
        let s = strip(src);
        assert_eq!(s.len(), src.len());
        let v: serde_json::Value = serde_json::from_str(&s).unwrap();
        assert_eq!(v["a"], "//not a comment");
        assert_eq!(v["b"], serde_json::json!([1, 2]));
        assert_eq!(s.matches('\n').count(), src.matches('\n').count());
    }

    #[test]
    fn strip_handles_escaped_quotes_and_unicode_comments() {
        let src = r#"{"a": "q\"//x", /* é */ "b": 1}"#;
        let v: serde_json::Value = serde_json::from_str(&strip(src)).unwrap();
        assert_eq!(v["a"], "q\"//x");
    }

    #[test]
    fn remove_middle_last_and_only_member() {
        let src = "{\n  // keep me\n  \"s\": {\n    \"a\": {\"command\": \"x\"},\n    \"b\": {},\n    \"c\": 1\n  }\n}\n";
        let (out, val) = remove_member(src, &p(&["s"]), "b").unwrap().unwrap();
        assert_eq!(val, "{}");
        assert!(out.contains("// keep me"));
        let v: serde_json::Value = serde_json::from_str(&strip(&out)).unwrap();
        assert_eq!(v["s"].as_object().unwrap().len(), 2);
        let (out2, _) = remove_member(&out, &p(&["s"]), "c").unwrap().unwrap();
        let v: serde_json::Value = serde_json::from_str(&strip(&out2)).unwrap();
        assert_eq!(v["s"], serde_json::json!({"a": {"command": "x"}}));
        let (out3, _) = remove_member(&out2, &p(&["s"]), "a").unwrap().unwrap();
        let v: serde_json::Value = serde_json::from_str(&strip(&out3)).unwrap();
        assert_eq!(v["s"], serde_json::json!({}));
        assert!(remove_member(&out3, &p(&["s"]), "a").unwrap().is_none());
        assert!(remove_member(&out3, &p(&["nope"]), "a").unwrap().is_none());
    }

    #[test]
    fn set_and_insert_members() {
        let src = "{\n  \"s\": {\n    \"a\": {\n      \"command\": \"x\"\n    }\n  }\n}";
        let out = set_member(src, &p(&["s", "a"]), "disabled", "true").unwrap().unwrap();
        let v: serde_json::Value = serde_json::from_str(&out).unwrap();
        assert_eq!(v["s"]["a"]["disabled"], true);
        let out = set_member(&out, &p(&["s", "a"]), "disabled", "false").unwrap().unwrap();
        let v: serde_json::Value = serde_json::from_str(&out).unwrap();
        assert_eq!(v["s"]["a"]["disabled"], false);
        let out = insert_member(&out, &p(&["s"]), "b", "{\"url\": \"u\"}").unwrap();
        let v: serde_json::Value = serde_json::from_str(&out).unwrap();
        assert_eq!(v["s"]["b"]["url"], "u");
        let out = insert_member("{}", &p(&["x", "y"]), "n", "1").unwrap();
        let v: serde_json::Value = serde_json::from_str(&out).unwrap();
        assert_eq!(v, serde_json::json!({"x": {"y": {"n": 1}}}));
    }

    #[test]
    fn broken_json_is_a_span_error() {
        assert!(remove_member("{\"s\": {\"a\": }", &p(&["s"]), "a").is_err());
        assert!(remove_member("[1]", &p(&[]), "a").is_err());
    }
}
