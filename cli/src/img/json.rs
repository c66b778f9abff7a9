//! JSON the way qemu-img prints it.
//!
//! qemu-img builds its JSON as a QDict (a 512-bucket hash table) and pretty-prints it by walking
//! the buckets, so keys come out in hash order, not in the QAPI schema order. [`Obj`] keeps keys
//! in insertion (schema) order and [`Value::pretty`] prints them in QDict order, which makes our
//! output byte-identical to qemu-img's (at least 7.2's; newer versions add fields).

use std::fmt::Write;

/// A JSON value.
#[derive(Debug, Clone, PartialEq)]
pub enum Value {
    /// `true` / `false`.
    Bool(bool),
    /// A signed integer (qemu prints every number as int64).
    Int(i64),
    /// A string.
    Str(String),
    /// An array.
    List(Vec<Value>),
    /// An object.
    Obj(Obj),
}

/// An object whose keys are inserted in QAPI schema order.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Obj(Vec<(String, Value)>);

/// Number of buckets of a QEMU QDict.
const QDICT_BUCKETS: u32 = 512;

/// QEMU's `tdb_hash` (qobject/qdict.c).
fn tdb_hash(name: &str) -> u32 {
    let bytes = name.as_bytes();
    let mut value = 0x238F_13AFu32.wrapping_mul(bytes.len() as u32);
    for (i, &b) in bytes.iter().enumerate() {
        value = value.wrapping_add(u32::from(b) << ((i * 5) % 24));
    }
    1_103_515_243u32.wrapping_mul(value).wrapping_add(12345)
}

impl Obj {
    /// An empty object.
    pub fn new() -> Obj {
        Obj(Vec::new())
    }

    /// Adds (or replaces) a member.
    pub fn set(&mut self, key: &str, value: impl Into<Value>) -> &mut Obj {
        let value = value.into();
        if let Some(slot) = self.0.iter_mut().find(|(k, _)| k == key) {
            slot.1 = value;
        } else {
            self.0.push((key.to_string(), value));
        }
        self
    }

    /// The members in the order a QDict iterates them: by bucket, and within a bucket the
    /// latest insertion first.
    fn qdict_order(&self) -> Vec<&(String, Value)> {
        let mut v: Vec<(usize, &(String, Value))> = self.0.iter().enumerate().collect();
        v.sort_by_key(|(i, (k, _))| (tdb_hash(k) % QDICT_BUCKETS, std::cmp::Reverse(*i)));
        v.into_iter().map(|(_, e)| e).collect()
    }

    /// Members in QDict order (for the human dump of format-specific data).
    pub fn entries(&self) -> Vec<(&str, &Value)> {
        self.qdict_order()
            .into_iter()
            .map(|(k, v)| (k.as_str(), v))
            .collect()
    }
}

impl From<bool> for Value {
    fn from(b: bool) -> Value {
        Value::Bool(b)
    }
}
impl From<i64> for Value {
    fn from(n: i64) -> Value {
        Value::Int(n)
    }
}
impl From<u64> for Value {
    fn from(n: u64) -> Value {
        Value::Int(n as i64)
    }
}
impl From<u32> for Value {
    fn from(n: u32) -> Value {
        Value::Int(i64::from(n))
    }
}
impl From<&str> for Value {
    fn from(s: &str) -> Value {
        Value::Str(s.to_string())
    }
}
impl From<String> for Value {
    fn from(s: String) -> Value {
        Value::Str(s)
    }
}
impl From<Obj> for Value {
    fn from(o: Obj) -> Value {
        Value::Obj(o)
    }
}
impl From<Vec<Value>> for Value {
    fn from(l: Vec<Value>) -> Value {
        Value::List(l)
    }
}

/// Appends `s` as a JSON string the way QEMU's `to_json` does: printable ASCII as is, the usual
/// short escapes, everything else as `\uXXXX` (surrogate pairs above the BMP).
pub fn push_str(out: &mut String, s: &str) {
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\u{8}' => out.push_str("\\b"),
            '\u{c}' => out.push_str("\\f"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            ' '..='~' => out.push(c),
            _ => {
                let mut units = [0u16; 2];
                for u in c.encode_utf16(&mut units) {
                    let _ = write!(out, "\\u{:04X}", u);
                }
            }
        }
    }
    out.push('"');
}

impl Value {
    /// Pretty-printed like `qobject_to_json_pretty` (4-space indent, no trailing newline).
    pub fn pretty(&self) -> String {
        let mut out = String::new();
        self.write_pretty(&mut out, 0);
        out
    }

    fn write_pretty(&self, out: &mut String, level: usize) {
        match self {
            Value::Bool(b) => out.push_str(if *b { "true" } else { "false" }),
            Value::Int(n) => {
                let _ = write!(out, "{n}");
            }
            Value::Str(s) => push_str(out, s),
            Value::List(items) => {
                out.push('[');
                for (i, item) in items.iter().enumerate() {
                    out.push_str(if i == 0 { "\n" } else { ",\n" });
                    indent(out, level + 1);
                    item.write_pretty(out, level + 1);
                }
                out.push('\n');
                indent(out, level);
                out.push(']');
            }
            Value::Obj(obj) => {
                out.push('{');
                for (i, (k, v)) in obj.qdict_order().into_iter().enumerate() {
                    out.push_str(if i == 0 { "\n" } else { ",\n" });
                    indent(out, level + 1);
                    push_str(out, k);
                    out.push_str(": ");
                    v.write_pretty(out, level + 1);
                }
                out.push('\n');
                indent(out, level);
                out.push('}');
            }
        }
    }
}

fn indent(out: &mut String, level: usize) {
    for _ in 0..level {
        out.push_str("    ");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn check_keys_come_out_in_qemu_order() {
        let mut o = Obj::new();
        o.set("filename", "a.qcow2")
            .set("format", "qcow2")
            .set("check-errors", 0u64)
            .set("image-end-offset", 393216u64)
            .set("total-clusters", 160u64)
            .set("allocated-clusters", 1u64);
        let expect = "{\n    \"image-end-offset\": 393216,\n    \"total-clusters\": 160,\n    \
                      \"check-errors\": 0,\n    \"allocated-clusters\": 1,\n    \
                      \"filename\": \"a.qcow2\",\n    \"format\": \"qcow2\"\n}";
        assert_eq!(Value::Obj(o).pretty(), expect);
    }

    #[test]
    fn strings_escape_like_qemu() {
        let mut s = String::new();
        push_str(&mut s, "a\"b\\c\n\u{7f}é😀");
        assert_eq!(s, "\"a\\\"b\\\\c\\n\\u007F\\u00E9\\uD83D\\uDE00\"");
    }
}
