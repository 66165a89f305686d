//! A read model's shape and the changes a projection makes to it: tables declared as data
//! (so that the runner can build a shadow copy, swap it in and compare it row by row), values
//! that both SQLite and PostgreSQL hold, and the change list an event turns into.

use std::borrow::Cow;

use annal_core::{Timestamp, Uuid};

/// A value in a read-model row or a statement's parameter.
#[derive(Debug, Clone, PartialEq)]
pub enum Value {
    Null,
    Int(i64),
    Real(f64),
    Text(String),
    Blob(Vec<u8>),
}

impl Value {
    pub fn as_int(&self) -> Option<i64> {
        match self {
            Value::Int(i) => Some(*i),
            _ => None,
        }
    }

    pub fn as_real(&self) -> Option<f64> {
        match self {
            Value::Real(r) => Some(*r),
            Value::Int(i) => Some(*i as f64),
            _ => None,
        }
    }

    pub fn as_text(&self) -> Option<&str> {
        match self {
            Value::Text(t) => Some(t),
            _ => None,
        }
    }

    pub fn is_null(&self) -> bool {
        matches!(self, Value::Null)
    }
}

impl std::fmt::Display for Value {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Value::Null => f.write_str("NULL"),
            Value::Int(i) => write!(f, "{i}"),
            Value::Real(r) => write!(f, "{r}"),
            Value::Text(t) => write!(f, "'{}'", t.replace('\'', "''")),
            Value::Blob(b) => write!(f, "<{} bytes>", b.len()),
        }
    }
}

impl From<i64> for Value {
    fn from(v: i64) -> Self {
        Value::Int(v)
    }
}

impl From<i32> for Value {
    fn from(v: i32) -> Self {
        Value::Int(v.into())
    }
}

impl From<u32> for Value {
    fn from(v: u32) -> Self {
        Value::Int(v.into())
    }
}

/// Past `i64::MAX` (which no position, revision or amount reaches) it saturates.
impl From<u64> for Value {
    fn from(v: u64) -> Self {
        Value::Int(i64::try_from(v).unwrap_or(i64::MAX))
    }
}

impl From<bool> for Value {
    fn from(v: bool) -> Self {
        Value::Int(v.into())
    }
}

impl From<f64> for Value {
    fn from(v: f64) -> Self {
        Value::Real(v)
    }
}

impl From<String> for Value {
    fn from(v: String) -> Self {
        Value::Text(v)
    }
}

impl From<&str> for Value {
    fn from(v: &str) -> Self {
        Value::Text(v.to_string())
    }
}

impl From<&String> for Value {
    fn from(v: &String) -> Self {
        Value::Text(v.clone())
    }
}

impl From<Vec<u8>> for Value {
    fn from(v: Vec<u8>) -> Self {
        Value::Blob(v)
    }
}

impl From<Uuid> for Value {
    fn from(v: Uuid) -> Self {
        Value::Text(v.to_string())
    }
}

/// As microseconds since the Unix epoch.
impl From<Timestamp> for Value {
    fn from(v: Timestamp) -> Self {
        Value::Int(v.as_micros())
    }
}

impl<T: Into<Value>> From<Option<T>> for Value {
    fn from(v: Option<T>) -> Self {
        v.map_or(Value::Null, Into::into)
    }
}

/// A column's type, as both sinks store it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ColumnType {
    /// BIGINT.
    Int,
    /// DOUBLE PRECISION (REAL in SQLite).
    Real,
    Text,
    /// BYTEA in PostgreSQL, BLOB in SQLite.
    Blob,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Column {
    pub name: String,
    pub ty: ColumnType,
}

/// A secondary index of a table.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Index {
    pub name: String,
    pub columns: Vec<String>,
}

/// A table of a read model: its key columns first, then the others (which may be NULL).
///
/// ```
/// use annal_cqrs::projection::{ColumnType::*, Table};
/// let accounts = Table::new("accounts")
///     .key("id", Text)
///     .column("owner", Text)
///     .column("balance", Int)
///     .index("by_owner", &["owner"]);
/// assert_eq!(accounts.key_columns().count(), 1);
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Table {
    pub name: String,
    pub columns: Vec<Column>,
    /// How many of the first columns form the primary key.
    pub key: usize,
    pub indexes: Vec<Index>,
}

/// The longest table, column or index name: the runner appends suffixes to table names, and
/// PostgreSQL cuts identifiers at 63 bytes.
pub const MAX_NAME: usize = 40;

impl Table {
    pub fn new(name: impl Into<String>) -> Self {
        Table {
            name: name.into(),
            columns: Vec::new(),
            key: 0,
            indexes: Vec::new(),
        }
    }

    /// A key column. Key columns come before every other column.
    pub fn key(mut self, name: impl Into<String>, ty: ColumnType) -> Self {
        self.columns.insert(
            self.key,
            Column {
                name: name.into(),
                ty,
            },
        );
        self.key += 1;
        self
    }

    /// A column outside the key; it may be NULL.
    pub fn column(mut self, name: impl Into<String>, ty: ColumnType) -> Self {
        self.columns.push(Column {
            name: name.into(),
            ty,
        });
        self
    }

    pub fn index(mut self, name: impl Into<String>, columns: &[&str]) -> Self {
        self.indexes.push(Index {
            name: name.into(),
            columns: columns.iter().map(|c| c.to_string()).collect(),
        });
        self
    }

    pub fn key_columns(&self) -> impl Iterator<Item = &Column> {
        self.columns[..self.key].iter()
    }

    /// What is wrong with the definition, if anything.
    pub fn problem(&self) -> Option<String> {
        let t = &self.name;
        if let Some(p) = name_problem(t) {
            return Some(format!("table name '{t}': {p}"));
        }
        if self.key == 0 {
            return Some(format!("table '{t}' has no key column"));
        }
        let mut seen = std::collections::HashSet::new();
        for c in &self.columns {
            if let Some(p) = name_problem(&c.name) {
                return Some(format!("column '{}' of table '{t}': {p}", c.name));
            }
            if !seen.insert(c.name.as_str()) {
                return Some(format!("table '{t}' names column '{}' twice", c.name));
            }
        }
        for i in &self.indexes {
            if let Some(p) = name_problem(&i.name) {
                return Some(format!("index '{}' of table '{t}': {p}", i.name));
            }
            if t.len() + i.name.len() > MAX_NAME + 10 {
                return Some(format!(
                    "index '{}' of table '{t}': the table's and the index's names together may \
                     have at most {} characters",
                    i.name,
                    MAX_NAME + 10
                ));
            }
            if i.columns.is_empty() {
                return Some(format!("index '{}' of table '{t}' has no column", i.name));
            }
            if let Some(c) = i.columns.iter().find(|c| !seen.contains(c.as_str())) {
                return Some(format!(
                    "index '{}' of table '{t}' names column '{c}', which the table does not have",
                    i.name
                ));
            }
        }
        None
    }
}

/// Names are lower-case identifiers that need no quoting in either sink; `__` is kept for
/// the runner's own suffixes.
pub(crate) fn name_problem(name: &str) -> Option<&'static str> {
    if let Some(p) = identifier_problem(name) {
        return Some(p);
    }
    if name.len() > MAX_NAME {
        return Some("is longer than 40 characters");
    }
    if name.contains("__") || name.starts_with("annal_") {
        return Some("'__' and the prefix 'annal_' are kept for Annal's own tables");
    }
    None
}

/// A lower-case identifier of at most 63 bytes (PostgreSQL's limit).
pub(crate) fn identifier_problem(name: &str) -> Option<&'static str> {
    let mut chars = name.chars();
    if !chars
        .next()
        .is_some_and(|c| c.is_ascii_lowercase() || c == '_')
    {
        return Some("must start with a lower-case letter or '_'");
    }
    if !chars.all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_') {
        return Some("may hold only lower-case letters, digits and '_'");
    }
    if name.len() > 63 {
        return Some("is longer than 63 characters");
    }
    None
}

/// One change to a read model.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Change {
    /// Insert the row, or replace the row with its key.
    Upsert { table: usize, row: Vec<Value> },
    /// Delete the row with this key.
    Delete { table: usize, key: Vec<Value> },
    /// A statement of the projection's own: `{table}` names a declared table, `$1`, `$2`...
    /// its parameters.
    Sql {
        template: Cow<'static, str>,
        params: Vec<Value>,
    },
}

/// The changes one event makes to a read model. A misuse (an unknown table, a row of the
/// wrong width) is kept and fails the event, as an error returned by the projection does.
#[derive(Debug)]
pub struct Changes<'t> {
    tables: &'t [Table],
    pub(crate) list: Vec<Change>,
    pub(crate) misuse: Option<String>,
}

impl<'t> Changes<'t> {
    pub(crate) fn new(tables: &'t [Table]) -> Self {
        Changes {
            tables,
            list: Vec::new(),
            misuse: None,
        }
    }

    fn table(&mut self, name: &str, width: usize, delete: bool) -> Option<usize> {
        let what = if delete { "delete" } else { "upsert" };
        let Some(i) = self.tables.iter().position(|t| t.name == name) else {
            self.misuse.get_or_insert_with(|| {
                format!("{what} names table '{name}', which the projection does not declare")
            });
            return None;
        };
        let t = &self.tables[i];
        let wanted = if delete { t.key } else { t.columns.len() };
        if width != wanted {
            self.misuse.get_or_insert_with(|| {
                format!("{what} in '{name}' gives {width} values; the table wants {wanted}")
            });
            return None;
        }
        Some(i)
    }

    /// Inserts `row` (every column, in the table's order), or replaces the row with its key.
    pub fn upsert(&mut self, table: &str, row: impl IntoIterator<Item = Value>) {
        let row: Vec<Value> = row.into_iter().collect();
        if let Some(table) = self.table(table, row.len(), false) {
            self.list.push(Change::Upsert { table, row });
        }
    }

    /// Deletes the row with this key (the key columns' values, in order).
    pub fn delete(&mut self, table: &str, key: impl IntoIterator<Item = Value>) {
        let key: Vec<Value> = key.into_iter().collect();
        if let Some(table) = self.table(table, key.len(), true) {
            self.list.push(Change::Delete { table, key });
        }
    }

    /// Runs a statement of the projection's own, such as
    /// `UPDATE {accounts} SET balance = balance + $2 WHERE id = $1`: `{accounts}` is the
    /// declared table (the runner puts the live or the shadow copy's name there), `$n` the
    /// n-th parameter. Write SQL that both SQLite and PostgreSQL accept.
    pub fn execute(
        &mut self,
        template: impl Into<Cow<'static, str>>,
        params: impl IntoIterator<Item = Value>,
    ) {
        self.list.push(Change::Sql {
            template: template.into(),
            params: params.into_iter().collect(),
        });
    }

    /// How many changes so far.
    pub fn len(&self) -> usize {
        self.list.len()
    }

    pub fn is_empty(&self) -> bool {
        self.list.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::ColumnType::*;
    use super::*;

    #[test]
    fn a_table_names_its_problem() {
        let ok = Table::new("accounts")
            .column("balance", Int)
            .key("id", Text);
        assert_eq!(ok.problem(), None);
        assert_eq!(ok.columns[0].name, "id", "key columns come first");
        let cases = [
            (Table::new("Accounts").key("id", Text), "lower-case"),
            (Table::new("a__b").key("id", Text), "'__'"),
            (Table::new("accounts").column("x", Int), "no key column"),
            (Table::new("t").key("id", Text).column("id", Int), "twice"),
            (
                Table::new("t").key("id", Text).index("i", &["nope"]),
                "does not have",
            ),
            (Table::new("x".repeat(41)).key("id", Text), "longer than 40"),
        ];
        for (t, wanted) in cases {
            let p = t.problem().expect("a problem");
            assert!(p.contains(wanted), "{p:?} should say {wanted:?}");
        }
    }

    #[test]
    fn misuse_is_kept_and_named() {
        let tables = [Table::new("t").key("id", Text).column("n", Int)];
        let mut c = Changes::new(&tables);
        c.upsert("t", ["a".into(), 1.into()]);
        assert_eq!(c.len(), 1);
        c.upsert("t", ["a".into()]);
        c.delete("u", ["a".into()]);
        assert_eq!(c.len(), 1);
        let m = c.misuse.unwrap();
        assert!(m.contains("gives 1 values; the table wants 2"), "{m}");
    }
}
