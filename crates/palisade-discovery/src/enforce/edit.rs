//! Format-aware edits of one server entry: remove it, flag it disabled,
//! extract its original text, and put it back. JSON(C) is edited in place
//! by byte span (comments and layout elsewhere survive), TOML through
//! `toml_edit` (layout preserved), YAML through `serde_yaml` (comments are
//! lost; the original bytes are always in the backup).
//!
//! These functions work on text only. They must never be called on a
//! document that failed to parse: callers verify first, and every edit here
//! returns an error rather than guess.

use crate::clients::Format;
use crate::jsonc;

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum EditError {
    #[error("document cannot be edited: {0}")]
    Parse(String),
    #[error("container {0:?} is not a table/map/list")]
    Container(Vec<String>),
}

/// Remove entry `name` from `container`. `Ok(None)` when it is not there.
pub fn remove(format: Format, text: &str, container: &[String], name: &str) -> Result<Option<String>, EditError> {
    match format {
        Format::Jsonc => Ok(jsonc::remove_member(text, container, name)
            .map_err(|e| EditError::Parse(e.to_string()))?
            .map(|(t, _)| t)),
        Format::Toml => {
            let mut doc: toml_edit::DocumentMut = text.parse().map_err(|e: toml_edit::TomlError| EditError::Parse(e.message().to_string()))?;
            let Some(t) = toml_table_mut(&mut doc, container, false)? else { return Ok(None) };
            Ok(t.remove(name).map(|_| doc.to_string()))
        }
        Format::Yaml => {
            let mut doc = yaml_doc(text)?;
            let Some(seq) = yaml_seq_mut(&mut doc, container, false)? else { return Ok(None) };
            let Some(i) = yaml_index(seq, name) else { return Ok(None) };
            seq.remove(i);
            yaml_out(&doc).map(Some)
        }
    }
}

/// Set `key` to the JSON literal `value` inside entry `name` (JSON only).
pub fn set_flag(text: &str, container: &[String], name: &str, key: &str, value: &str) -> Result<Option<String>, EditError> {
    let mut path = container.to_vec();
    path.push(name.to_string());
    jsonc::set_member(text, &path, key, value).map_err(|e| EditError::Parse(e.to_string()))
}

/// The entry's original text (a JSON value, a TOML table, a YAML mapping).
pub fn extract(format: Format, text: &str, container: &[String], name: &str) -> Result<Option<String>, EditError> {
    match format {
        Format::Jsonc => {
            let clean = jsonc::strip(text);
            let Some(obj) = jsonc::object_at_path(&clean, container).map_err(|e| EditError::Parse(e.to_string()))? else {
                return Ok(None);
            };
            Ok(obj.members.iter().find(|m| m.key == name).map(|m| text[m.value_start..m.value_end].to_string()))
        }
        Format::Toml => {
            let mut doc: toml_edit::DocumentMut = text.parse().map_err(|e: toml_edit::TomlError| EditError::Parse(e.message().to_string()))?;
            let Some(t) = toml_table_mut(&mut doc, container, false)? else { return Ok(None) };
            let Some(item) = t.get(name) else { return Ok(None) };
            // Wrap in a one-entry document so sub-tables serialise too.
            let mut one = toml_edit::DocumentMut::new();
            one.insert(name, item.clone());
            Ok(Some(one.to_string()))
        }
        Format::Yaml => {
            let mut doc = yaml_doc(text)?;
            let Some(seq) = yaml_seq_mut(&mut doc, container, false)? else { return Ok(None) };
            let Some(i) = yaml_index(seq, name) else { return Ok(None) };
            serde_yaml::to_string(&seq[i]).map(Some).map_err(|e| EditError::Parse(e.to_string()))
        }
    }
}

/// Put entry `name` (text from [`extract`]) into `container`, replacing an
/// existing entry of that name and creating the container if missing.
pub fn put(format: Format, text: &str, container: &[String], name: &str, entry: &str) -> Result<String, EditError> {
    match format {
        Format::Jsonc => {
            let base = if text.trim().is_empty() { "{}\n" } else { text };
            jsonc::insert_member(base, container, name, entry).map_err(|e| EditError::Parse(e.to_string()))
        }
        Format::Toml => {
            let mut doc: toml_edit::DocumentMut = text.parse().map_err(|e: toml_edit::TomlError| EditError::Parse(e.message().to_string()))?;
            let one: toml_edit::DocumentMut = entry.parse().map_err(|e: toml_edit::TomlError| EditError::Parse(e.message().to_string()))?;
            let item = one.get(name).cloned().ok_or_else(|| EditError::Parse("entry text has no such key".into()))?;
            let t = toml_table_mut(&mut doc, container, true)?.expect("created");
            t.insert(name, item);
            Ok(doc.to_string())
        }
        Format::Yaml => {
            let mut doc = if text.trim().is_empty() {
                serde_yaml::Value::Mapping(Default::default())
            } else {
                yaml_doc(text)?
            };
            let item: serde_yaml::Value = serde_yaml::from_str(entry).map_err(|e| EditError::Parse(e.to_string()))?;
            let seq = yaml_seq_mut(&mut doc, container, true)?.expect("created");
            match yaml_index(seq, name) {
                Some(i) => seq[i] = item,
                None => seq.push(item),
            }
            yaml_out(&doc)
        }
    }
}

fn toml_table_mut<'a>(
    doc: &'a mut toml_edit::DocumentMut,
    path: &[String],
    create: bool,
) -> Result<Option<&'a mut toml_edit::Table>, EditError> {
    let mut t: &mut toml_edit::Table = doc.as_table_mut();
    for k in path {
        if !t.contains_key(k) {
            if !create {
                return Ok(None);
            }
            let mut nt = toml_edit::Table::new();
            nt.set_implicit(true);
            t.insert(k, toml_edit::Item::Table(nt));
        }
        t = match t.get_mut(k) {
            Some(toml_edit::Item::Table(nt)) => nt,
            _ => return Err(EditError::Container(path.to_vec())),
        };
    }
    Ok(Some(t))
}

fn yaml_doc(text: &str) -> Result<serde_yaml::Value, EditError> {
    serde_yaml::from_str(text).map_err(|e| EditError::Parse(e.to_string()))
}

fn yaml_out(doc: &serde_yaml::Value) -> Result<String, EditError> {
    serde_yaml::to_string(doc).map_err(|e| EditError::Parse(e.to_string()))
}

fn yaml_seq_mut<'a>(
    doc: &'a mut serde_yaml::Value,
    path: &[String],
    create: bool,
) -> Result<Option<&'a mut Vec<serde_yaml::Value>>, EditError> {
    let mut v = doc;
    for (i, k) in path.iter().enumerate() {
        let last = i + 1 == path.len();
        let map = v.as_mapping_mut().ok_or_else(|| EditError::Container(path.to_vec()))?;
        let key = serde_yaml::Value::String(k.clone());
        if !map.contains_key(&key) {
            if !create {
                return Ok(None);
            }
            let fresh = if last {
                serde_yaml::Value::Sequence(Vec::new())
            } else {
                serde_yaml::Value::Mapping(Default::default())
            };
            map.insert(key.clone(), fresh);
        }
        v = map.get_mut(&key).expect("present");
    }
    match v {
        serde_yaml::Value::Sequence(s) => Ok(Some(s)),
        _ => Err(EditError::Container(path.to_vec())),
    }
}

fn yaml_index(seq: &[serde_yaml::Value], name: &str) -> Option<usize> {
    seq.iter().enumerate().position(|(i, item)| match item.get("name").and_then(|n| n.as_str()) {
        Some(n) => n == name,
        None => name == format!("#{i}"),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn c(a: &[&str]) -> Vec<String> {
        a.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn toml_remove_extract_put_round_trip() {
        let src = "# my config\nmodel = \"x\"\n\n[mcp_servers.a]\ncommand = \"a\"\n\n[mcp_servers.a.env]\nK = \"v\"\n\n[mcp_servers.b]\nurl = \"https://b\"\n";
        let entry = extract(Format::Toml, src, &c(&["mcp_servers"]), "a").unwrap().unwrap();
        let removed = remove(Format::Toml, src, &c(&["mcp_servers"]), "a").unwrap().unwrap();
        assert!(removed.contains("# my config") && !removed.contains("command = \"a\"") && removed.contains("[mcp_servers.b]"));
        let back = put(Format::Toml, &removed, &c(&["mcp_servers"]), "a", &entry).unwrap();
        let v: toml::Table = toml::from_str(&back).unwrap();
        assert_eq!(v["mcp_servers"]["a"]["env"]["K"].as_str(), Some("v"));
        assert!(remove(Format::Toml, src, &c(&["mcp_servers"]), "zzz").unwrap().is_none());
        assert!(matches!(remove(Format::Toml, "x = = 1", &c(&["mcp_servers"]), "a"), Err(EditError::Parse(_))));
        assert!(matches!(remove(Format::Toml, "mcp_servers = 1", &c(&["mcp_servers"]), "a"), Err(EditError::Container(_))));
        // Re-adding into a file that lost the whole table creates it.
        let fresh = put(Format::Toml, "", &c(&["mcp_servers"]), "a", &entry).unwrap();
        let v: toml::Table = toml::from_str(&fresh).unwrap();
        assert_eq!(v["mcp_servers"]["a"]["command"].as_str(), Some("a"));
    }

    #[test]
    fn yaml_remove_extract_put_round_trip() {
        let src = "name: cfg\nmcpServers:\n  - name: a\n    command: a\n  - name: b\n    command: b\n";
        let entry = extract(Format::Yaml, src, &c(&["mcpServers"]), "a").unwrap().unwrap();
        let removed = remove(Format::Yaml, src, &c(&["mcpServers"]), "a").unwrap().unwrap();
        let v: serde_yaml::Value = serde_yaml::from_str(&removed).unwrap();
        assert_eq!(v["mcpServers"].as_sequence().unwrap().len(), 1);
        let back = put(Format::Yaml, &removed, &c(&["mcpServers"]), "a", &entry).unwrap();
        let v: serde_yaml::Value = serde_yaml::from_str(&back).unwrap();
        assert_eq!(v["mcpServers"].as_sequence().unwrap().len(), 2);
        assert!(matches!(remove(Format::Yaml, "mcpServers: 3\n", &c(&["mcpServers"]), "a"), Err(EditError::Container(_))));
    }

    #[test]
    fn json_flag_and_extract() {
        let src = "{\"mcpServers\": {\"a\": {\"command\": \"a\"} /* note */}}";
        let out = set_flag(src, &c(&["mcpServers"]), "a", "disabled", "true").unwrap().unwrap();
        assert!(out.contains("/* note */"));
        let v: serde_json::Value = serde_json::from_str(&jsonc::strip(&out)).unwrap();
        assert_eq!(v["mcpServers"]["a"]["disabled"], true);
        assert_eq!(extract(Format::Jsonc, src, &c(&["mcpServers"]), "a").unwrap().unwrap(), "{\"command\": \"a\"}");
        assert!(set_flag(src, &c(&["mcpServers"]), "zzz", "disabled", "true").unwrap().is_none());
    }
}
