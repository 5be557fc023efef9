//! Small, total helpers over `serde_json::Value` shared by the format
//! adapters: typed lookups that return `None` on any shape mismatch, the
//! provider error-body shapes, and a size-capped text buffer.
//!
//! Nothing here may panic or index without checking: provider bodies are
//! untrusted and shapes drift.

use serde_json::{Map, Value};

/// Walk `path` through nested objects.
pub(crate) fn at<'a>(v: &'a Value, path: &[&str]) -> Option<&'a Value> {
    let mut cur = v;
    for key in path {
        cur = cur.as_object()?.get(*key)?;
    }
    Some(cur)
}

pub(crate) fn str_at<'a>(v: &'a Value, path: &[&str]) -> Option<&'a str> {
    at(v, path)?.as_str()
}

/// A token count: a non-negative integer (also accepts integral floats such as `12.0`).
pub(crate) fn u64_at(v: &Value, path: &[&str]) -> Option<u64> {
    as_count(at(v, path)?)
}

pub(crate) fn as_count(v: &Value) -> Option<u64> {
    if let Some(n) = v.as_u64() {
        return Some(n);
    }
    let f = v.as_f64()?;
    (f.is_finite() && f >= 0.0 && f.fract() == 0.0 && f <= u64::MAX as f64).then_some(f as u64)
}

pub(crate) fn arr_at<'a>(v: &'a Value, path: &[&str]) -> &'a [Value] {
    at(v, path).and_then(Value::as_array).map(Vec::as_slice).unwrap_or(&[])
}

/// Parse a body as a JSON value, with the message the record shows.
pub(crate) fn parse_body(body: &[u8], what: &str) -> Result<Value, String> {
    if body.iter().all(u8::is_ascii_whitespace) {
        return Err(format!("{what} body is empty"));
    }
    serde_json::from_slice::<Value>(body).map_err(|e| format!("{what} body is not valid JSON: {e}"))
}

/// The message of a provider error body, in any of the known shapes:
/// OpenAI `{"error":{"message","type","code"}}`, Anthropic
/// `{"type":"error","error":{"type","message"}}`, Gemini
/// `{"error":{"code","message","status"}}`, or `{"error":"text"}`.
pub(crate) fn error_message(v: &Value) -> Option<String> {
    let err = v.as_object()?.get("error")?;
    match err {
        Value::String(s) => Some(s.clone()),
        Value::Object(o) => Some(describe_error_object(o)),
        Value::Null => None,
        other => Some(other.to_string()),
    }
}

pub(crate) fn describe_error_object(o: &Map<String, Value>) -> String {
    let message = o.get("message").and_then(Value::as_str);
    let kind = o
        .get("type")
        .and_then(Value::as_str)
        .or_else(|| o.get("status").and_then(Value::as_str))
        .or_else(|| o.get("code").and_then(Value::as_str));
    match (kind, message) {
        (Some(k), Some(m)) => format!("{k}: {m}"),
        (None, Some(m)) => m.to_string(),
        (Some(k), None) => k.to_string(),
        (None, None) => Value::Object(o.clone()).to_string(),
    }
}

/// Scalar request parameters worth recording; never content.
pub(crate) fn copy_scalars(src: &Value, keys: &[&str], dst: &mut Map<String, Value>) {
    for key in keys {
        if let Some(v) = src.get(*key) {
            if matches!(v, Value::Bool(_) | Value::Number(_) | Value::String(_)) {
                dst.insert((*key).to_string(), v.clone());
            }
        }
    }
}

/// Record the length of an array parameter (e.g. `tools`) as a count.
pub(crate) fn copy_count(src: &Value, key: &str, dst_key: &str, dst: &mut Map<String, Value>) {
    if let Some(a) = src.get(key).and_then(Value::as_array) {
        dst.insert(dst_key.to_string(), Value::from(a.len()));
    }
}

/// A text accumulator with a byte cap. Pushes beyond the cap are cut at a
/// char boundary and mark the buffer truncated.
#[derive(Clone, Default)]
pub(crate) struct TextBuf {
    s: String,
    limit: usize,
    truncated: bool,
    touched: bool,
}

impl TextBuf {
    pub(crate) fn new(limit: usize) -> Self {
        Self {
            s: String::new(),
            limit,
            truncated: false,
            touched: false,
        }
    }

    pub(crate) fn push(&mut self, t: &str) {
        self.touched = true;
        if self.truncated {
            return;
        }
        let room = self.limit.saturating_sub(self.s.len());
        if t.len() <= room {
            self.s.push_str(t);
        } else {
            let mut cut = room;
            while cut > 0 && !t.is_char_boundary(cut) {
                cut -= 1;
            }
            self.s.push_str(&t[..cut]);
            self.truncated = true;
        }
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.s.is_empty()
    }

    pub(crate) fn truncated(&self) -> bool {
        self.truncated
    }

    /// `None` if nothing was ever pushed.
    pub(crate) fn into_option(self) -> Option<String> {
        self.touched.then_some(self.s)
    }

    pub(crate) fn as_str(&self) -> &str {
        &self.s
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn lookups_are_total() {
        let v = json!({"a": {"b": 3, "f": 2.0, "neg": -1, "s": "x"}, "arr": [1]});
        assert_eq!(u64_at(&v, &["a", "b"]), Some(3));
        assert_eq!(u64_at(&v, &["a", "f"]), Some(2));
        assert_eq!(u64_at(&v, &["a", "neg"]), None);
        assert_eq!(u64_at(&v, &["a", "s"]), None);
        assert_eq!(u64_at(&v, &["arr", "x"]), None);
        assert_eq!(str_at(&v, &["a", "s"]), Some("x"));
        assert!(arr_at(&v, &["a"]).is_empty());
        assert_eq!(arr_at(&v, &["arr"]).len(), 1);
    }

    #[test]
    fn error_shapes() {
        assert_eq!(
            error_message(&json!({"error": {"message": "bad", "type": "invalid_request_error"}})).as_deref(),
            Some("invalid_request_error: bad")
        );
        assert_eq!(
            error_message(&json!({"error": {"code": 429, "message": "quota", "status": "RESOURCE_EXHAUSTED"}}))
                .as_deref(),
            Some("RESOURCE_EXHAUSTED: quota")
        );
        assert_eq!(error_message(&json!({"error": "plain"})).as_deref(), Some("plain"));
        assert_eq!(error_message(&json!({"error": null})), None);
        assert_eq!(error_message(&json!([1])), None);
    }

    #[test]
    fn text_buf_caps_at_char_boundary() {
        let mut t = TextBuf::new(5);
        t.push("ab");
        t.push("cé€");
        assert!(t.truncated());
        assert_eq!(t.as_str(), "abcé");
        t.push("more");
        assert_eq!(t.into_option().as_deref(), Some("abcé"));
        assert_eq!(TextBuf::new(5).into_option(), None);
    }

    #[test]
    fn empty_and_invalid_bodies() {
        assert_eq!(parse_body(b"  \n", "request").unwrap_err(), "request body is empty");
        assert!(parse_body(b"{", "request").unwrap_err().starts_with("request body is not valid JSON: "));
    }
}
