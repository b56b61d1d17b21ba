//! One connection type for both backends, so the store's queries are written once.
//!
//! A [`Db`] is an SQLite connection or a PostgreSQL client. The store's SQL is written in the
//! subset both understand (`ON CONFLICT … DO NOTHING`, `RETURNING`, `COALESCE`, `CASE`, integer
//! unix-millisecond times, JSON kept as text); placeholders are SQLite's `?N`, rewritten to
//! PostgreSQL's `$N` once per statement and cached with the prepared statement.
//!
//! Values cross as [`Value`]: on PostgreSQL a value converts to whatever type the server infers
//! for the placeholder (an `i64` binds to `INT4`, `INT8`, `FLOAT8` or `BOOL` alike), and a column
//! reads back through [`FromValue`] whatever its server type, `NUMERIC` sums included. So the
//! same row-mapping code serves both backends.

use std::cell::RefCell;
use std::collections::HashMap;

use super::StoreError;

/// A connection of either backend. Used by one thread at a time (the writer, or a reader that
/// took it from the pool).
pub enum Db {
    Sqlite(rusqlite::Connection),
    Pg(RefCell<PgConn>),
}

/// A PostgreSQL client with its prepared statements (keyed by the store's SQL text).
pub struct PgConn {
    /// Its connection is driven on the I/O thread (`pg::io`); requests are waited on here.
    pub(super) client: tokio_postgres::Client,
    /// How to connect again when the server closes the connection.
    pub(super) options: Option<super::PgOptions>,
    statements: HashMap<String, tokio_postgres::Statement>,
}

impl PgConn {
    pub(super) fn new(client: tokio_postgres::Client, options: super::PgOptions) -> PgConn {
        PgConn {
            client,
            options: Some(options),
            statements: HashMap::new(),
        }
    }

    fn statement(&mut self, sql: &str) -> Result<tokio_postgres::Statement, StoreError> {
        if let Some(s) = self.statements.get(sql) {
            return Ok(s.clone());
        }
        let stmt = wait(self.client.prepare(&pg_sql(sql)))?;
        // Dynamic SQL (filters) is bounded in shape; still, never let the cache grow unbounded.
        if self.statements.len() >= 512 {
            self.statements.clear();
        }
        self.statements.insert(sql.to_owned(), stmt.clone());
        Ok(stmt)
    }
}

/// Which database a [`Db`] talks to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    Sqlite,
    Postgres,
}

impl Db {
    pub fn backend(&self) -> Backend {
        match self {
            Db::Sqlite(_) => Backend::Sqlite,
            Db::Pg(_) => Backend::Postgres,
        }
    }

    /// The SQLite connection (for what only SQLite has: backups, file checks).
    pub(super) fn sqlite(&self) -> Option<&rusqlite::Connection> {
        match self {
            Db::Sqlite(c) => Some(c),
            Db::Pg(_) => None,
        }
    }

    /// Runs one statement; returns the number of rows it changed.
    pub fn execute<P: Params>(&self, sql: &str, params: P) -> Result<usize, StoreError> {
        let values = params.values();
        match self {
            Db::Sqlite(c) => Ok(c
                .prepare_cached(sql)?
                .execute(rusqlite::params_from_iter(values.iter()))?),
            Db::Pg(pg) => {
                let mut pg = pg.borrow_mut();
                let stmt = pg.statement(sql)?;
                let refs = pg_params(&values);
                Ok(wait(pg.client.execute(&stmt, &refs))? as usize)
            }
        }
    }

    /// Runs one transaction-control statement that is run for every write (`BEGIN`, `COMMIT`,
    /// `SAVEPOINT op`, `RELEASE op`): SQLite's is prepared once and kept, where [`Db::batch`]
    /// would parse it each time (four to six of them per write).
    pub fn control(&self, sql: &str) -> Result<(), StoreError> {
        match self {
            Db::Sqlite(c) => {
                c.prepare_cached(sql)?.execute([])?;
                Ok(())
            }
            Db::Pg(pg) => Ok(wait(pg.borrow_mut().client.batch_execute(sql))?),
        }
    }

    /// Runs statements with no parameters, separated by `;` (transaction control, DDL).
    pub fn batch(&self, sql: &str) -> Result<(), StoreError> {
        match self {
            Db::Sqlite(c) => Ok(c.execute_batch(sql)?),
            Db::Pg(pg) => Ok(wait(pg.borrow_mut().client.batch_execute(sql))?),
        }
    }

    /// Every row of a query, each mapped by `f`.
    pub fn query_map<T, P, F>(&self, sql: &str, params: P, mut f: F) -> Result<Vec<T>, StoreError>
    where
        P: Params,
        F: FnMut(&Row<'_>) -> Result<T, StoreError>,
    {
        let values = params.values();
        match self {
            Db::Sqlite(c) => {
                let mut stmt = c.prepare_cached(sql)?;
                let mut rows = stmt.query(rusqlite::params_from_iter(values.iter()))?;
                let mut out = Vec::new();
                while let Some(r) = rows.next()? {
                    out.push(f(&Row::Sqlite(r))?);
                }
                Ok(out)
            }
            Db::Pg(pg) => {
                // The rows are fetched before any is mapped, so `f` may query again.
                let rows = {
                    let mut pg = pg.borrow_mut();
                    let stmt = pg.statement(sql)?;
                    let refs = pg_params(&values);
                    wait(pg.client.query(&stmt, &refs))?
                };
                rows.iter().map(|r| f(&Row::Pg(r))).collect()
            }
        }
    }

    /// The first row of a query mapped by `f`, or `None` when there is none.
    pub fn query_opt<T, P, F>(&self, sql: &str, params: P, f: F) -> Result<Option<T>, StoreError>
    where
        P: Params,
        F: FnOnce(&Row<'_>) -> Result<T, StoreError>,
    {
        let values = params.values();
        match self {
            Db::Sqlite(c) => {
                let mut stmt = c.prepare_cached(sql)?;
                let mut rows = stmt.query(rusqlite::params_from_iter(values.iter()))?;
                match rows.next()? {
                    Some(r) => Ok(Some(f(&Row::Sqlite(r))?)),
                    None => Ok(None),
                }
            }
            Db::Pg(pg) => {
                let row = {
                    let mut pg = pg.borrow_mut();
                    let stmt = pg.statement(sql)?;
                    let refs = pg_params(&values);
                    wait(pg.client.query_opt(&stmt, &refs))
                };
                // `query_opt` refuses more than one row; the store's "first row" reads are
                // single-row by their keys or `LIMIT 1`, so that error is a real one.
                match row? {
                    Some(r) => Ok(Some(f(&Row::Pg(&r))?)),
                    None => Ok(None),
                }
            }
        }
    }

    /// The one row a query must return (an aggregate, a row known to exist).
    pub fn query_one<T, P, F>(&self, sql: &str, params: P, f: F) -> Result<T, StoreError>
    where
        P: Params,
        F: FnOnce(&Row<'_>) -> Result<T, StoreError>,
    {
        self.query_opt(sql, params, f)?
            .ok_or_else(|| StoreError::Corrupt(format!("no row from `{}`", first_line(sql))))
    }
}

/// Waits for a request on the calling thread (the writer, a reader, or an inline store's caller —
/// never needs a runtime of its own, so it works inside a tokio runtime too).
fn wait<F: std::future::Future>(f: F) -> F::Output {
    futures_executor::block_on(f)
}

fn first_line(sql: &str) -> &str {
    sql.trim().lines().next().unwrap_or("")
}

/// A result row of either backend.
pub enum Row<'a> {
    Sqlite(&'a rusqlite::Row<'a>),
    Pg(&'a tokio_postgres::Row),
}

impl Row<'_> {
    /// Column `i` (from 0) as `T`.
    pub fn get<I: RowIndex, T: FromValue>(&self, i: I) -> Result<T, StoreError> {
        let i = i.index();
        let v = match self {
            Row::Sqlite(r) => ValueRef::from(r.get_ref(i)?),
            Row::Pg(r) => r
                .try_get::<_, PgAny<'_>>(i)
                .map_err(StoreError::Postgres)?
                .0
                .unwrap_or(ValueRef::Null),
        };
        T::from_value(v).map_err(|e| StoreError::Corrupt(format!("column {i}: {e}")))
    }
}

/// A column number (only `usize`, so `r.get(0)` needs no annotation).
pub trait RowIndex {
    fn index(self) -> usize;
}

impl RowIndex for usize {
    fn index(self) -> usize {
        self
    }
}

/// A column's value as read.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum ValueRef<'a> {
    Null,
    Int(i64),
    Real(f64),
    Text(&'a str),
}

impl<'a> From<rusqlite::types::ValueRef<'a>> for ValueRef<'a> {
    fn from(v: rusqlite::types::ValueRef<'a>) -> Self {
        use rusqlite::types::ValueRef as V;
        match v {
            V::Null => ValueRef::Null,
            V::Integer(i) => ValueRef::Int(i),
            V::Real(f) => ValueRef::Real(f),
            // The store writes only UTF-8 text; anything else reads as the lossless part.
            V::Text(t) | V::Blob(t) => ValueRef::Text(std::str::from_utf8(t).unwrap_or("")),
        }
    }
}

/// A parameter's value.
#[derive(Debug, Clone, PartialEq)]
pub enum Value<'a> {
    Null,
    Int(i64),
    Real(f64),
    Text(std::borrow::Cow<'a, str>),
}

/// Converts a column value to a Rust type (integers and reals convert where no digit is lost).
pub trait FromValue: Sized {
    fn from_value(v: ValueRef<'_>) -> Result<Self, String>;
}

impl FromValue for i64 {
    fn from_value(v: ValueRef<'_>) -> Result<Self, String> {
        match v {
            ValueRef::Int(i) => Ok(i),
            ValueRef::Real(f) if f.fract() == 0.0 && f.abs() < 9.0e15 => Ok(f as i64),
            other => Err(format!("expected an integer, found {other:?}")),
        }
    }
}

macro_rules! from_int {
    ($($t:ty),*) => {$(
        impl FromValue for $t {
            fn from_value(v: ValueRef<'_>) -> Result<Self, String> {
                let i = i64::from_value(v)?;
                <$t>::try_from(i).map_err(|_| format!("{i} out of range for {}", stringify!($t)))
            }
        }
    )*};
}
from_int!(i32, u8, u16, u32, u64, usize);

impl FromValue for bool {
    fn from_value(v: ValueRef<'_>) -> Result<Self, String> {
        Ok(i64::from_value(v)? != 0)
    }
}

impl FromValue for f64 {
    fn from_value(v: ValueRef<'_>) -> Result<Self, String> {
        match v {
            ValueRef::Int(i) => Ok(i as f64),
            ValueRef::Real(f) => Ok(f),
            other => Err(format!("expected a number, found {other:?}")),
        }
    }
}

impl FromValue for String {
    fn from_value(v: ValueRef<'_>) -> Result<Self, String> {
        match v {
            ValueRef::Text(t) => Ok(t.to_owned()),
            other => Err(format!("expected text, found {other:?}")),
        }
    }
}

impl<T: FromValue> FromValue for Option<T> {
    fn from_value(v: ValueRef<'_>) -> Result<Self, String> {
        match v {
            ValueRef::Null => Ok(None),
            v => T::from_value(v).map(Some),
        }
    }
}

/// Converts a Rust value to a parameter.
pub trait ToValue {
    fn to_value(&self) -> Value<'_>;
}

macro_rules! to_int {
    ($($t:ty),*) => {$(
        impl ToValue for $t {
            fn to_value(&self) -> Value<'_> {
                Value::Int(*self as i64)
            }
        }
    )*};
}
to_int!(i64, i32, u8, u16, u32, u64, usize);

impl ToValue for bool {
    fn to_value(&self) -> Value<'_> {
        Value::Int(*self as i64)
    }
}

impl ToValue for f64 {
    fn to_value(&self) -> Value<'_> {
        Value::Real(*self)
    }
}

impl ToValue for str {
    fn to_value(&self) -> Value<'_> {
        Value::Text(std::borrow::Cow::Borrowed(self))
    }
}

impl ToValue for String {
    fn to_value(&self) -> Value<'_> {
        Value::Text(std::borrow::Cow::Borrowed(self))
    }
}

impl<T: ToValue + ?Sized> ToValue for &T {
    fn to_value(&self) -> Value<'_> {
        (**self).to_value()
    }
}

impl<T: ToValue> ToValue for Option<T> {
    fn to_value(&self) -> Value<'_> {
        match self {
            Some(v) => v.to_value(),
            None => Value::Null,
        }
    }
}

impl ToValue for Value<'_> {
    fn to_value(&self) -> Value<'_> {
        match self {
            Value::Text(t) => Value::Text(std::borrow::Cow::Borrowed(t)),
            Value::Null => Value::Null,
            Value::Int(i) => Value::Int(*i),
            Value::Real(f) => Value::Real(*f),
        }
    }
}

/// A statement's parameters: `params![a, b]`, `[a]`, `()`, or a `Vec` of values.
pub trait Params {
    fn values(&self) -> Vec<Value<'_>>;
}

impl Params for () {
    fn values(&self) -> Vec<Value<'_>> {
        Vec::new()
    }
}

impl Params for &[&dyn ToValue] {
    fn values(&self) -> Vec<Value<'_>> {
        self.iter().map(|v| v.to_value()).collect()
    }
}

impl<T: ToValue, const N: usize> Params for [T; N] {
    fn values(&self) -> Vec<Value<'_>> {
        self.iter().map(|v| v.to_value()).collect()
    }
}

impl<T: ToValue> Params for Vec<T> {
    fn values(&self) -> Vec<Value<'_>> {
        self.iter().map(|v| v.to_value()).collect()
    }
}

impl<T: ToValue> Params for &Vec<T> {
    fn values(&self) -> Vec<Value<'_>> {
        self.iter().map(|v| v.to_value()).collect()
    }
}

/// `params![a, b, …]`: parameters of mixed types.
macro_rules! params {
    () => { () };
    ($($p:expr),+ $(,)?) => { &[$(&$p as &dyn $crate::store::db::ToValue),+] as &[&dyn $crate::store::db::ToValue] };
}
pub(crate) use params;

impl rusqlite::ToSql for Value<'_> {
    fn to_sql(&self) -> rusqlite::Result<rusqlite::types::ToSqlOutput<'_>> {
        use rusqlite::types::{ToSqlOutput, ValueRef as V};
        Ok(ToSqlOutput::Borrowed(match self {
            Value::Null => V::Null,
            Value::Int(i) => V::Integer(*i),
            Value::Real(f) => V::Real(*f),
            Value::Text(t) => V::Text(t.as_bytes()),
        }))
    }
}

fn pg_params<'a>(values: &'a [Value<'a>]) -> Vec<&'a (dyn tokio_postgres::types::ToSql + Sync)> {
    values
        .iter()
        .map(|v| v as &(dyn tokio_postgres::types::ToSql + Sync))
        .collect()
}

impl tokio_postgres::types::ToSql for Value<'_> {
    fn to_sql(
        &self,
        ty: &tokio_postgres::types::Type,
        out: &mut bytes::BytesMut,
    ) -> Result<tokio_postgres::types::IsNull, Box<dyn std::error::Error + Sync + Send>> {
        use tokio_postgres::types::{IsNull, Type};
        let wrong = |v: &Value<'_>| -> Box<dyn std::error::Error + Sync + Send> {
            format!("cannot bind {v:?} to a {ty} parameter").into()
        };
        match self {
            Value::Null => Ok(IsNull::Yes),
            Value::Int(i) => match *ty {
                Type::INT8 => i.to_sql(ty, out),
                Type::INT4 => i32::try_from(*i).map_err(|_| wrong(self))?.to_sql(ty, out),
                Type::INT2 => i16::try_from(*i).map_err(|_| wrong(self))?.to_sql(ty, out),
                Type::FLOAT8 => (*i as f64).to_sql(ty, out),
                Type::FLOAT4 => (*i as f32).to_sql(ty, out),
                Type::BOOL => (*i != 0).to_sql(ty, out),
                Type::TEXT | Type::VARCHAR => i.to_string().to_sql(ty, out),
                _ => Err(wrong(self)),
            },
            Value::Real(f) => match *ty {
                Type::FLOAT8 => f.to_sql(ty, out),
                Type::FLOAT4 => (*f as f32).to_sql(ty, out),
                Type::INT8 if f.fract() == 0.0 => (*f as i64).to_sql(ty, out),
                _ => Err(wrong(self)),
            },
            Value::Text(t) => match *ty {
                Type::TEXT | Type::VARCHAR | Type::BPCHAR | Type::NAME | Type::UNKNOWN => {
                    t.as_ref().to_sql(ty, out)
                }
                _ => Err(wrong(self)),
            },
        }
    }

    fn accepts(_: &tokio_postgres::types::Type) -> bool {
        true
    }

    tokio_postgres::types::to_sql_checked!();
}

/// Any PostgreSQL column as a [`ValueRef`] (`None` for NULL).
struct PgAny<'a>(Option<ValueRef<'a>>);

impl<'a> tokio_postgres::types::FromSql<'a> for PgAny<'a> {
    fn from_sql(
        ty: &tokio_postgres::types::Type,
        raw: &'a [u8],
    ) -> Result<Self, Box<dyn std::error::Error + Sync + Send>> {
        use tokio_postgres::types::Type;
        let v = match *ty {
            Type::INT8 => ValueRef::Int(i64::from_sql(ty, raw)?),
            Type::INT4 => ValueRef::Int(i32::from_sql(ty, raw)? as i64),
            Type::INT2 => ValueRef::Int(i16::from_sql(ty, raw)? as i64),
            Type::BOOL => ValueRef::Int(bool::from_sql(ty, raw)? as i64),
            Type::FLOAT8 => ValueRef::Real(f64::from_sql(ty, raw)?),
            Type::FLOAT4 => ValueRef::Real(f32::from_sql(ty, raw)? as f64),
            Type::NUMERIC => numeric(raw)?,
            Type::TEXT | Type::VARCHAR | Type::BPCHAR | Type::NAME | Type::UNKNOWN => {
                ValueRef::Text(<&str>::from_sql(ty, raw)?)
            }
            Type::JSON => ValueRef::Text(std::str::from_utf8(raw)?),
            // jsonb's binary form is a version byte, then the text.
            Type::JSONB => ValueRef::Text(std::str::from_utf8(raw.get(1..).unwrap_or(&[]))?),
            _ => return Err(format!("unsupported column type {ty}").into()),
        };
        Ok(PgAny(Some(v)))
    }

    fn from_sql_null(
        _: &tokio_postgres::types::Type,
    ) -> Result<Self, Box<dyn std::error::Error + Sync + Send>> {
        Ok(PgAny(None))
    }

    fn accepts(_: &tokio_postgres::types::Type) -> bool {
        true
    }
}

/// PostgreSQL's binary `NUMERIC` (what `SUM`/`AVG` of integers give): an integer when it has no
/// fractional digits and fits, else the nearest `f64`.
fn numeric(raw: &[u8]) -> Result<ValueRef<'static>, Box<dyn std::error::Error + Sync + Send>> {
    let word = |i: usize| -> Result<u16, Box<dyn std::error::Error + Sync + Send>> {
        raw.get(i..i + 2)
            .map(|b| u16::from_be_bytes([b[0], b[1]]))
            .ok_or_else(|| "short NUMERIC".into())
    };
    let ndigits = word(0)? as usize;
    let weight = word(2)? as i16 as i32;
    let sign = word(4)?;
    let dscale = word(6)?;
    if sign == 0xC000 {
        return Ok(ValueRef::Real(f64::NAN));
    }
    let mut f = 0f64;
    let mut int: Option<i128> = Some(0);
    for d in 0..ndigits {
        let digit = word(8 + 2 * d)? as i32;
        let power = weight - d as i32;
        f += digit as f64 * 10000f64.powi(power);
        int = match int {
            Some(acc) if power >= 0 => 10000i128
                .checked_pow(power as u32)
                .and_then(|p| p.checked_mul(digit as i128))
                .and_then(|v| acc.checked_add(v)),
            Some(acc) if digit == 0 => Some(acc),
            _ => None,
        };
    }
    let negative = sign == 0x4000;
    if dscale == 0 {
        if let Some(i) = int.and_then(|i| i64::try_from(if negative { -i } else { i }).ok()) {
            return Ok(ValueRef::Int(i));
        }
    }
    Ok(ValueRef::Real(if negative { -f } else { f }))
}

/// The store's SQL for PostgreSQL: `?N` → `$N`, a bare `?` → the next number, and ` LIKE ` →
/// ` ILIKE ` (SQLite's LIKE ignores ASCII case), all outside quotes.
pub(super) fn pg_sql(sql: &str) -> String {
    let mut out = String::with_capacity(sql.len() + 8);
    let mut next = 1usize;
    let mut chars = sql.chars().peekable();
    let mut quote: Option<char> = None;
    while let Some(ch) = chars.next() {
        if quote.is_none() && ch.is_whitespace() && out.ends_with(" LIKE") {
            out.truncate(out.len() - " LIKE".len());
            out.push_str(" ILIKE");
        }
        match quote {
            Some(q) => {
                out.push(ch);
                if ch == q {
                    quote = None;
                }
            }
            None if ch == '\'' || ch == '"' => {
                quote = Some(ch);
                out.push(ch);
            }
            None if ch == '?' => {
                let mut digits = String::new();
                while let Some(d) = chars.peek().copied().filter(char::is_ascii_digit) {
                    digits.push(d);
                    chars.next();
                }
                out.push('$');
                if digits.is_empty() {
                    out.push_str(&next.to_string());
                    next += 1;
                } else {
                    out.push_str(&digits);
                }
            }
            None => out.push(ch),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn placeholders_become_numbered_outside_quotes() {
        assert_eq!(
            pg_sql("SELECT a FROM t WHERE b = ?1 AND c = ?12 AND d = '?' AND e = ?"),
            "SELECT a FROM t WHERE b = $1 AND c = $12 AND d = '?' AND e = $1"
        );
        assert_eq!(pg_sql("VALUES (?, ?, ?)"), "VALUES ($1, $2, $3)");
        assert_eq!(
            pg_sql("WHERE name LIKE ?1 ESCAPE '\\' AND x = ' LIKE '"),
            "WHERE name ILIKE $1 ESCAPE '\\' AND x = ' LIKE '"
        );
    }

    #[test]
    fn numeric_sums_decode() {
        // 12345678 = digits [1234, 5678], weight 1, scale 0.
        let raw = [0, 2, 0, 1, 0, 0, 0, 0, 0x04, 0xD2, 0x16, 0x2E];
        assert_eq!(numeric(&raw).unwrap(), ValueRef::Int(12_345_678));
        // -1.5 = digits [1, 5000], weight 0, negative, scale 1.
        let raw = [0, 2, 0, 0, 0x40, 0, 0, 1, 0, 1, 0x13, 0x88];
        assert_eq!(numeric(&raw).unwrap(), ValueRef::Real(-1.5));
        // 0 = no digits.
        let raw = [0, 0, 0, 0, 0, 0, 0, 0];
        assert_eq!(numeric(&raw).unwrap(), ValueRef::Int(0));
    }

    #[test]
    fn values_read_back_leniently_but_losslessly() {
        assert_eq!(i64::from_value(ValueRef::Real(3.0)), Ok(3));
        assert!(i64::from_value(ValueRef::Real(3.5)).is_err());
        assert_eq!(u8::from_value(ValueRef::Int(10)), Ok(10));
        assert!(u8::from_value(ValueRef::Int(300)).is_err());
        assert_eq!(Option::<String>::from_value(ValueRef::Null), Ok(None));
        assert_eq!(bool::from_value(ValueRef::Int(1)), Ok(true));
    }
}
