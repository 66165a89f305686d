//! The PostgreSQL sink: one connection per sink, its search path set to the sink's schema.
//! A batch's statements are pipelined: sent together inside the transaction, then their
//! answers read, so a batch costs about one round trip rather than one per event.

use std::collections::HashMap;
use std::sync::Arc;

use bytes::BytesMut;
use tokio_postgres::error::SqlState;
use tokio_postgres::types::{to_sql_checked, FromSql, IsNull, ToSql, Type};
use tokio_postgres::{Client, NoTls, Statement};

use super::{BoxFuture, Conn, SinkError, Stmt};
use crate::projection::model::Value;

const SINK: &str = "PostgreSQL";

/// The fewest statements sent as one call of a function.
const RUN_AT_LEAST: usize = 4;

/// PostgreSQL's limit on a function's arguments.
const MAX_ARGS: usize = 100;

/// `$n` outside quoted strings becomes `{prefix}{n}[{index}]`.
fn parameters_to_elements(sql: &str, prefix: &str, index: &str) -> String {
    let mut out = String::with_capacity(sql.len() + 32);
    let mut quoted = false;
    let mut chars = sql.chars().peekable();
    while let Some(c) = chars.next() {
        if c == '\'' {
            quoted = !quoted;
        }
        if c == '$' && !quoted && chars.peek().is_some_and(char::is_ascii_digit) {
            let mut n = String::new();
            while let Some(d) = chars.next_if(char::is_ascii_digit) {
                n.push(d);
            }
            out.push_str(&format!("{prefix}{n}[{index}]"));
            continue;
        }
        out.push(c);
    }
    out
}

pub(crate) struct Postgres {
    url: String,
    pub(crate) schema: String,
    conn: tokio::sync::Mutex<Option<PgConn>>,
}

pub(crate) struct PgConn {
    client: Client,
    prepared: HashMap<Arc<str>, Statement>,
    /// Per set of statements, the call of their function over arrays
    /// ([`PgConn::run_function`]).
    runs: HashMap<String, Statement>,
    /// Numbers the functions, so that one made again after a rollback has a new name.
    next_run: u64,
    /// A call was dropped halfway through a transaction: the connection is not reused.
    in_transaction: bool,
}

impl Postgres {
    pub(crate) async fn connect(url: &str, schema: &str) -> Result<Postgres, SinkError> {
        let p = Postgres {
            url: url.to_string(),
            schema: schema.to_string(),
            conn: tokio::sync::Mutex::new(None),
        };
        *p.conn.lock().await = Some(p.open().await?);
        Ok(p)
    }

    async fn open(&self) -> Result<PgConn, SinkError> {
        let (client, connection) =
            tokio_postgres::connect(&self.url, NoTls)
                .await
                .map_err(|e| SinkError::Unavailable {
                    sink: SINK,
                    message: format!("cannot connect: {e}"),
                })?;
        tokio::spawn(async move {
            if let Err(e) = connection.await {
                tracing::debug!(error = %e, "read-model connection ended");
            }
        });
        let s = &self.schema;
        match client
            .batch_execute(&format!("CREATE SCHEMA IF NOT EXISTS {s}"))
            .await
        {
            // Another connection created it at the same moment.
            Err(e) if e.code() == Some(&SqlState::UNIQUE_VIOLATION) => {}
            r => r.map_err(error)?,
        }
        client
            .batch_execute(&format!("SET search_path TO {s}"))
            .await
            .map_err(error)?;
        Ok(PgConn {
            client,
            prepared: HashMap::new(),
            runs: HashMap::new(),
            next_run: 0,
            in_transaction: false,
        })
    }

    pub(crate) async fn exec<T: Send + 'static>(
        &self,
        f: impl for<'c> FnOnce(Conn<'c>) -> BoxFuture<'c, Result<T, SinkError>> + Send + 'static,
    ) -> Result<T, SinkError> {
        let mut slot = self.conn.lock().await;
        let usable = slot
            .as_ref()
            .is_some_and(|c| !c.client.is_closed() && !c.in_transaction);
        if !usable {
            *slot = None;
            *slot = Some(self.open().await?);
        }
        let conn = slot.as_mut().expect("connected above");
        let r = f(Conn::Postgres(conn)).await;
        if matches!(r, Err(SinkError::Unavailable { .. })) || conn.client.is_closed() {
            *slot = None;
        }
        r
    }
}

fn error(e: tokio_postgres::Error) -> SinkError {
    let io = std::error::Error::source(&e).is_some_and(|s| s.is::<std::io::Error>());
    let transient = e.is_closed()
        || io
        || e.code().is_some_and(|c| {
            [
                SqlState::ADMIN_SHUTDOWN,
                SqlState::CANNOT_CONNECT_NOW,
                SqlState::T_R_SERIALIZATION_FAILURE,
                SqlState::T_R_DEADLOCK_DETECTED,
                SqlState::TOO_MANY_CONNECTIONS,
                SqlState::DISK_FULL,
            ]
            .contains(c)
        });
    let message = match (e.as_db_error(), std::error::Error::source(&e)) {
        (Some(db), _) => db.message().to_string(),
        (None, Some(source)) => format!("{e}: {source}"),
        (None, None) => e.to_string(),
    };
    if transient {
        SinkError::Unavailable {
            sink: SINK,
            message,
        }
    } else {
        SinkError::Statement {
            sink: SINK,
            message,
        }
    }
}

fn params(values: &[Value]) -> Vec<&(dyn ToSql + Sync)> {
    values.iter().map(|v| v as &(dyn ToSql + Sync)).collect()
}

impl PgConn {
    pub(crate) async fn batch(&mut self, sql: &str) -> Result<(), SinkError> {
        match sql {
            "BEGIN" => self.in_transaction = true,
            "COMMIT" | "ROLLBACK" => {
                let r = self.client.batch_execute(sql).await.map_err(error);
                self.in_transaction = r.is_err();
                if sql == "ROLLBACK" || r.is_err() {
                    // Functions created in the transaction are gone with it.
                    self.runs.clear();
                }
                return r;
            }
            _ => {}
        }
        self.client.batch_execute(sql).await.map_err(error)
    }

    async fn prepare(&mut self, sql: &str) -> Result<Statement, SinkError> {
        if let Some(s) = self.prepared.get(sql) {
            return Ok(s.clone());
        }
        let s = self.client.prepare(sql).await.map_err(error)?;
        // Statements are few (a projection's own, the runner's); a bound still keeps a
        // projection that builds its SQL on the fly from growing the map for ever.
        if self.prepared.len() >= 1024 {
            self.prepared.clear();
        }
        self.prepared.insert(Arc::from(sql), s.clone());
        Ok(s)
    }

    pub(crate) async fn execute(&mut self, sql: &str, values: &[Value]) -> Result<u64, SinkError> {
        let stmt = self.prepare(sql).await?;
        self.client
            .execute(&stmt, &params(values))
            .await
            .map_err(error)
    }

    /// A batch's statements, in order. A run of consecutive statements that can run inside
    /// a function (see [`PgConn::plain`]) goes to the server as one call of a function that
    /// loops over arrays of their parameters (see [`PgConn::run_function`]): PostgreSQL's
    /// cost per statement received is several times its cost per statement run inside a
    /// function. Every call is pipelined.
    pub(crate) async fn execute_all(&mut self, stmts: &[Stmt]) -> Result<(), SinkError> {
        enum Call<'a> {
            One(Statement, &'a [Value]),
            Run(Statement, Vec<i32>, Vec<Vec<Value>>),
        }
        let same = |a: &Arc<str>, b: &Arc<str>| Arc::ptr_eq(a, b) || a == b;
        let mut calls = Vec::new();
        let mut i = 0;
        while i < stmts.len() {
            // The longest run from `i` whose distinct statements fit one function.
            let mut kinds: Vec<(Arc<str>, Vec<Type>)> = Vec::new();
            let mut args = 1;
            let mut j = i;
            while let Some((sql, values)) = stmts.get(j) {
                if !kinds.iter().any(|(s, _)| same(s, sql)) {
                    let Some(types) = self.plain(sql).await? else {
                        break;
                    };
                    if args + types.len() > MAX_ARGS {
                        break;
                    }
                    args += types.len();
                    kinds.push((sql.clone(), types));
                }
                let width = kinds.iter().find(|(s, _)| same(s, sql)).map(|k| k.1.len());
                if width != Some(values.len()) {
                    break;
                }
                j += 1;
            }
            if j - i < RUN_AT_LEAST {
                let end = j.max(i + 1);
                for (sql, values) in &stmts[i..end] {
                    calls.push(Call::One(self.prepare(sql).await?, values));
                }
                i = end;
                continue;
            }
            kinds.sort_by(|a, b| a.0.cmp(&b.0));
            let call = self.run_function(&kinds).await?;
            let mut first = Vec::with_capacity(kinds.len());
            let mut width = 0;
            for (_, types) in &kinds {
                first.push(width);
                width += types.len();
            }
            let mut ops = Vec::with_capacity(j - i);
            let mut columns = vec![Vec::new(); width];
            for (sql, values) in &stmts[i..j] {
                let k = kinds
                    .iter()
                    .position(|(s, _)| same(s, sql))
                    .expect("a kind");
                ops.push(k as i32 + 1);
                for (c, v) in values.iter().enumerate() {
                    columns[first[k] + c].push(v.clone());
                }
            }
            calls.push(Call::Run(call, ops, columns));
            i = j;
        }
        let client = &self.client;
        let sent = calls.iter().map(|c| async move {
            match c {
                Call::One(stmt, values) => client.execute(stmt, &params(values)).await,
                Call::Run(stmt, ops, columns) => {
                    let mut arrays: Vec<&(dyn ToSql + Sync)> = vec![ops];
                    arrays.extend(columns.iter().map(|c| c as &(dyn ToSql + Sync)));
                    client.execute(stmt, &arrays).await
                }
            }
        });
        futures_util::future::try_join_all(sent)
            .await
            .map_err(error)?;
        Ok(())
    }

    /// The types of the parameters of `sql` if it can run inside a function over arrays of
    /// them; `None` for one that returns rows, has no parameters, or has a parameter of a
    /// type outside `pg_catalog` (it is sent alone).
    async fn plain(&mut self, sql: &str) -> Result<Option<Vec<Type>>, SinkError> {
        let stmt = self.prepare(sql).await?;
        let types = stmt.params();
        let plain = !types.is_empty()
            && stmt.columns().is_empty()
            && types.iter().all(|t| {
                t.schema() == "pg_catalog" && !t.name().starts_with('_') && t.name() != "unknown"
            });
        Ok(plain.then(|| types.to_vec()))
    }

    /// The call of a function of this session that runs a sequence of the statements
    /// `kinds` (sorted, each [`PgConn::plain`], with its parameters' types) in the order of
    /// an array of their numbers, the n-th statement of a kind taking the n-th elements of
    /// that kind's arrays of parameters. For `UPDATE t SET n = n + $2 WHERE id = $1` alone:
    /// `FOR .. LOOP CASE annal_ops[annal_n] WHEN 1 THEN annal_i1 := annal_i1 + 1;
    /// UPDATE t SET n = n + annal_s1_p2[annal_i1] WHERE id = annal_s1_p1[annal_i1]; ..`.
    async fn run_function(
        &mut self,
        kinds: &[(Arc<str>, Vec<Type>)],
    ) -> Result<Statement, SinkError> {
        let key = kinds
            .iter()
            .map(|(s, _)| &**s)
            .collect::<Vec<_>>()
            .join("\0");
        if let Some(f) = self.runs.get(&key) {
            return Ok(f.clone());
        }
        self.next_run += 1;
        let name = format!("annal_run_{}", self.next_run);
        let mut args = vec!["annal_ops int4[]".to_string()];
        let mut declare = String::new();
        let mut cases = String::new();
        for (k, (sql, types)) in kinds.iter().enumerate() {
            let k = k + 1;
            for (p, t) in types.iter().enumerate() {
                args.push(format!("annal_s{k}_p{} {}[]", p + 1, t.name()));
            }
            declare.push_str(&format!("annal_i{k} int4 := 0; "));
            let body = sql.trim().trim_end_matches(';');
            let body =
                parameters_to_elements(body, &format!("annal_s{k}_p"), &format!("annal_i{k}"));
            cases.push_str(&format!(
                "WHEN {k} THEN annal_i{k} := annal_i{k} + 1; {body}; "
            ));
        }
        let create = format!(
            "CREATE OR REPLACE FUNCTION pg_temp.{name}({}) RETURNS void LANGUAGE plpgsql \
             AS $annal$ DECLARE {declare}BEGIN \
             FOR annal_n IN 1 .. coalesce(cardinality(annal_ops), 0) LOOP \
             CASE annal_ops[annal_n] {cases}END CASE; END LOOP; END $annal$",
            args.join(", ")
        );
        self.client.batch_execute(&create).await.map_err(error)?;
        let placeholders: Vec<String> = (1..=args.len()).map(|i| format!("${i}")).collect();
        let call = format!("SELECT FROM pg_temp.{name}({})", placeholders.join(", "));
        let call = self.client.prepare(&call).await.map_err(error)?;
        if self.runs.len() >= 256 {
            self.runs.clear();
        }
        self.runs.insert(key, call.clone());
        Ok(call)
    }

    pub(crate) async fn query(
        &mut self,
        sql: &str,
        values: &[Value],
    ) -> Result<Vec<Vec<Value>>, SinkError> {
        let stmt = self.prepare(sql).await?;
        let rows = self
            .client
            .query(&stmt, &params(values))
            .await
            .map_err(error)?;
        rows.iter()
            .map(|row| {
                (0..row.len())
                    .map(|i| row.try_get::<_, Value>(i).map_err(error))
                    .collect()
            })
            .collect()
    }
}

type BoxError = Box<dyn std::error::Error + Sync + Send>;

/// A value goes to whichever column type the statement has for it, where that type can
/// hold it: an integer to any integer, floating or boolean column, text to any text type.
impl ToSql for Value {
    fn to_sql(&self, ty: &Type, out: &mut BytesMut) -> Result<IsNull, BoxError> {
        match self {
            Value::Null => Ok(IsNull::Yes),
            Value::Int(i) => match *ty {
                Type::INT8 => i.to_sql(ty, out),
                Type::INT4 => i32::try_from(*i)?.to_sql(ty, out),
                Type::INT2 => i16::try_from(*i)?.to_sql(ty, out),
                Type::FLOAT8 => (*i as f64).to_sql(ty, out),
                Type::FLOAT4 => (*i as f32).to_sql(ty, out),
                Type::BOOL => (*i != 0).to_sql(ty, out),
                _ => Err(format!("an integer cannot be sent as {ty}").into()),
            },
            Value::Real(r) => match *ty {
                Type::FLOAT8 => r.to_sql(ty, out),
                Type::FLOAT4 => (*r as f32).to_sql(ty, out),
                _ => Err(format!("a real number cannot be sent as {ty}").into()),
            },
            Value::Text(t) if <&str as ToSql>::accepts(ty) => t.as_str().to_sql(ty, out),
            Value::Text(_) => Err(format!("text cannot be sent as {ty}").into()),
            Value::Blob(b) if *ty == Type::BYTEA => b.as_slice().to_sql(ty, out),
            Value::Blob(_) => Err(format!("bytes cannot be sent as {ty}").into()),
        }
    }

    fn accepts(_: &Type) -> bool {
        true
    }

    to_sql_checked!();
}

impl<'a> FromSql<'a> for Value {
    fn from_sql(ty: &Type, raw: &'a [u8]) -> Result<Self, BoxError> {
        Ok(match *ty {
            Type::INT8 => Value::Int(i64::from_sql(ty, raw)?),
            Type::INT4 => Value::Int(i32::from_sql(ty, raw)?.into()),
            Type::INT2 => Value::Int(i16::from_sql(ty, raw)?.into()),
            Type::BOOL => Value::Int(bool::from_sql(ty, raw)?.into()),
            Type::FLOAT8 => Value::Real(f64::from_sql(ty, raw)?),
            Type::FLOAT4 => Value::Real(f32::from_sql(ty, raw)?.into()),
            Type::BYTEA => Value::Blob(Vec::<u8>::from_sql(ty, raw)?),
            _ if <&str as FromSql>::accepts(ty) => Value::Text(String::from_sql(ty, raw)?),
            _ => {
                return Err(format!(
                    "a column of type {ty} is not read into a Value: cast it to BIGINT, \
                     DOUBLE PRECISION or TEXT"
                )
                .into())
            }
        })
    }

    fn from_sql_null(_: &Type) -> Result<Self, BoxError> {
        Ok(Value::Null)
    }

    fn accepts(_: &Type) -> bool {
        true
    }
}

#[cfg(test)]
mod tests {
    use bytes::BytesMut;
    use tokio_postgres::types::{ToSql, Type};

    use crate::projection::Value;

    #[test]
    fn a_value_goes_only_to_a_column_type_that_holds_it() {
        let mut out = BytesMut::new();
        let sent = |v: Value, ty: Type, out: &mut BytesMut| v.to_sql(&ty, out).map(|_| ());
        assert!(sent(Value::Int(7), Type::INT4, &mut out).is_ok());
        assert!(sent(Value::Int(1 << 40), Type::INT4, &mut out).is_err());
        assert!(sent(Value::Real(1.5), Type::FLOAT8, &mut out).is_ok());
        for (v, ty, says) in [
            (
                Value::Real(12.5),
                Type::INT8,
                "a real number cannot be sent as int8",
            ),
            (
                Value::Text("12345678".into()),
                Type::INT8,
                "text cannot be sent as int8",
            ),
            (
                Value::Blob(vec![1; 8]),
                Type::FLOAT8,
                "bytes cannot be sent as float8",
            ),
        ] {
            let e = sent(v, ty, &mut out).unwrap_err();
            assert_eq!(e.to_string(), says);
        }
    }

    #[test]
    fn parameters_become_array_elements_outside_strings() {
        assert_eq!(
            super::parameters_to_elements(
                "UPDATE t SET n = n + $2, s = '$1' WHERE id = $12",
                "annal_s1_p",
                "annal_i1"
            ),
            "UPDATE t SET n = n + annal_s1_p2[annal_i1], s = '$1' WHERE id = annal_s1_p12[annal_i1]"
        );
    }
}
