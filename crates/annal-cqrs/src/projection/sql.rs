//! The SQL the runner writes: table definitions, upserts and deletes of a declared table,
//! and a projection's own statements with their table names and placeholders filled in for
//! one sink.

use std::borrow::Cow;

use super::model::{ColumnType, Table};

/// Which SQL a sink speaks.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[cfg_attr(not(feature = "sqlite"), allow(dead_code))]
pub(crate) enum Dialect {
    Sqlite,
    Postgres,
}

/// Which copy of a read model's tables a statement writes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub(crate) enum Target {
    /// The tables queries read.
    Live,
    /// The copy a rebuild fills, swapped in once it has caught up.
    Shadow,
    /// The copy a reconciliation fills, to compare with the live one.
    Check,
}

impl Target {
    fn suffix(self) -> &'static str {
        match self {
            Target::Live => "",
            Target::Shadow => "__rebuild",
            Target::Check => "__check",
        }
    }
}

/// The name of `table`'s copy for `target`.
pub(crate) fn physical(table: &str, target: Target) -> String {
    format!("{table}{}", target.suffix())
}

fn type_name(ty: ColumnType, dialect: Dialect) -> &'static str {
    match (ty, dialect) {
        (ColumnType::Int, _) => "BIGINT",
        (ColumnType::Real, _) => "DOUBLE PRECISION",
        (ColumnType::Text, _) => "TEXT",
        (ColumnType::Blob, Dialect::Sqlite) => "BLOB",
        (ColumnType::Blob, Dialect::Postgres) => "BYTEA",
    }
}

/// The statements that create `table`'s copy for `target`. `tag` tells its key and index
/// names from those of the other copies (names are shared by a whole schema).
pub(crate) fn create_table(table: &Table, target: Target, tag: &str, d: Dialect) -> Vec<String> {
    let name = physical(&table.name, target);
    let columns: Vec<String> = table
        .columns
        .iter()
        .enumerate()
        .map(|(i, c)| {
            let null = if i < table.key { " NOT NULL" } else { "" };
            format!("{} {}{null}", c.name, type_name(c.ty, d))
        })
        .collect();
    let key: Vec<&str> = table.key_columns().map(|c| c.name.as_str()).collect();
    let mut out = vec![format!(
        "CREATE TABLE {name} ({}, CONSTRAINT {}__pk__{tag} PRIMARY KEY ({}))",
        columns.join(", "),
        table.name,
        key.join(", ")
    )];
    if target != Target::Check {
        for i in &table.indexes {
            out.push(format!(
                "CREATE INDEX {}__{}__{tag} ON {name} ({})",
                table.name,
                i.name,
                i.columns.join(", ")
            ));
        }
    }
    out
}

fn placeholder(n: usize, d: Dialect) -> String {
    match d {
        Dialect::Sqlite => format!("?{n}"),
        Dialect::Postgres => format!("${n}"),
    }
}

/// Inserts a whole row, or replaces the row with its key.
pub(crate) fn upsert(table: &Table, target: Target, d: Dialect) -> String {
    let names: Vec<&str> = table.columns.iter().map(|c| c.name.as_str()).collect();
    let values: Vec<String> = (1..=names.len()).map(|n| placeholder(n, d)).collect();
    let key = names[..table.key].join(", ");
    let rest = &names[table.key..];
    let on_conflict = if rest.is_empty() {
        "DO NOTHING".to_string()
    } else {
        let set: Vec<String> = rest.iter().map(|c| format!("{c} = excluded.{c}")).collect();
        format!("DO UPDATE SET {}", set.join(", "))
    };
    format!(
        "INSERT INTO {} ({}) VALUES ({}) ON CONFLICT ({key}) {on_conflict}",
        physical(&table.name, target),
        names.join(", "),
        values.join(", ")
    )
}

/// Deletes the row with a key.
pub(crate) fn delete(table: &Table, target: Target, d: Dialect) -> String {
    let cond: Vec<String> = table
        .key_columns()
        .enumerate()
        .map(|(i, c)| format!("{} = {}", c.name, placeholder(i + 1, d)))
        .collect();
    format!(
        "DELETE FROM {} WHERE {}",
        physical(&table.name, target),
        cond.join(" AND ")
    )
}

/// Every row of `table`'s copy, key columns first.
pub(crate) fn select_all(table: &Table, target: Target) -> String {
    let names: Vec<&str> = table.columns.iter().map(|c| c.name.as_str()).collect();
    format!(
        "SELECT {} FROM {}",
        names.join(", "),
        physical(&table.name, target)
    )
}

/// A projection's own statement for one copy and one sink: `{table}` becomes the copy's
/// name, and for SQLite `$n` becomes `?n`. Fails on a `{name}` the projection does not
/// declare.
pub(crate) fn render(
    template: &str,
    tables: &[Table],
    target: Target,
    d: Dialect,
) -> Result<String, String> {
    let mut out = String::with_capacity(template.len() + 16);
    let mut rest = template;
    while let Some(open) = rest.find('{') {
        out.push_str(&rest[..open]);
        let after = &rest[open + 1..];
        let Some(close) = after.find('}') else {
            return Err(format!("'{{' without '}}' in the statement {template:?}"));
        };
        let name = &after[..close];
        if !tables.iter().any(|t| t.name == name) {
            return Err(format!(
                "the statement {template:?} names table '{{{name}}}', which the projection \
                 does not declare"
            ));
        }
        out.push_str(&physical(name, target));
        rest = &after[close + 1..];
    }
    out.push_str(rest);
    Ok(match d {
        Dialect::Sqlite => placeholders(&out).into_owned(),
        Dialect::Postgres => out,
    })
}

/// `$n` outside quoted strings becomes `?n`, which SQLite binds by position (it would read
/// `$1` as a name and number names in the order they first appear).
pub(crate) fn placeholders(sql: &str) -> Cow<'_, str> {
    if !sql.contains('$') {
        return Cow::Borrowed(sql);
    }
    let mut out = String::with_capacity(sql.len());
    let mut quoted = false;
    let mut chars = sql.chars().peekable();
    while let Some(c) = chars.next() {
        match c {
            '\'' => quoted = !quoted,
            '$' if !quoted && chars.peek().is_some_and(char::is_ascii_digit) => {
                out.push('?');
                continue;
            }
            _ => {}
        }
        out.push(c);
    }
    Cow::Owned(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::projection::model::ColumnType::*;

    fn accounts() -> Table {
        Table::new("accounts")
            .key("id", Text)
            .column("balance", Int)
            .index("by_balance", &["balance"])
    }

    #[test]
    fn statements_for_each_copy_and_sink() {
        let t = accounts();
        assert_eq!(
            upsert(&t, Target::Shadow, Dialect::Sqlite),
            "INSERT INTO accounts__rebuild (id, balance) VALUES (?1, ?2) \
             ON CONFLICT (id) DO UPDATE SET balance = excluded.balance"
        );
        assert_eq!(
            delete(&t, Target::Live, Dialect::Postgres),
            "DELETE FROM accounts WHERE id = $1"
        );
        assert_eq!(
            create_table(&t, Target::Shadow, "b", Dialect::Postgres),
            [
                "CREATE TABLE accounts__rebuild (id TEXT NOT NULL, balance BIGINT, \
                 CONSTRAINT accounts__pk__b PRIMARY KEY (id))",
                "CREATE INDEX accounts__by_balance__b ON accounts__rebuild (balance)"
            ]
        );
        let keys_only = Table::new("seen").key("id", Text);
        assert!(upsert(&keys_only, Target::Live, Dialect::Sqlite).ends_with("DO NOTHING"));
    }

    #[test]
    fn a_projections_statement_is_rendered_per_copy() {
        let tables = [accounts()];
        let sql = "UPDATE {accounts} SET balance = balance + $2 WHERE id = $1 AND note <> '$1'";
        assert_eq!(
            render(sql, &tables, Target::Check, Dialect::Sqlite).unwrap(),
            "UPDATE accounts__check SET balance = balance + ?2 WHERE id = ?1 AND note <> '$1'"
        );
        assert_eq!(
            render(sql, &tables, Target::Live, Dialect::Postgres).unwrap(),
            "UPDATE accounts SET balance = balance + $2 WHERE id = $1 AND note <> '$1'"
        );
        let e = render("DELETE FROM {nope}", &tables, Target::Live, Dialect::Sqlite).unwrap_err();
        assert!(
            e.contains("'{nope}', which the projection does not declare"),
            "{e}"
        );
    }
}
