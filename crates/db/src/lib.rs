//! # oba-db
//!
//! What the OpenBotAuth stores (conversation memory, the audit trail, the usage
//! ledger) share about their databases:
//!
//! * [`is_transient`]: whether a sqlx error means "the database is not answering right
//!   now, retry" (so a writer keeps the item and retries) rather than "this item is
//!   wrong" (so it is set aside);
//! * [`check_schema_name`] and [`postgres_pool`]: a PostgreSQL pool whose connections
//!   all work in one schema.
//!
//! ```
//! use oba_db::{check_schema_name, is_transient, Backend};
//! assert!(check_schema_name("tenant_a").is_ok());
//! assert!(check_schema_name("a\"; DROP").is_err());
//! assert!(is_transient(&sqlx::Error::PoolTimedOut, Backend::Postgres));
//! assert!(!is_transient(&sqlx::Error::RowNotFound, Backend::Sqlite));
//! ```

#![forbid(unsafe_code)]

use std::str::FromStr;
use std::time::Duration;

use sqlx::postgres::{PgConnectOptions, PgPool, PgPoolOptions};

/// Which database produced an error (their codes overlap: PostgreSQL's `22021` is not
/// SQLite's `5`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    /// SQLite: numeric result codes.
    Sqlite,
    /// PostgreSQL: SQLSTATE codes.
    Postgres,
}

/// Whether `e` means the database is (temporarily) unreachable or busy: I/O, TLS and
/// protocol errors, pool time-outs, a closed pool or a crashed worker; SQLite BUSY,
/// LOCKED, IOERR and CANTOPEN (by primary result code); PostgreSQL connection
/// exceptions (SQLSTATE class 08), shutdown or start-up (57P01–57P03) and too many
/// connections (53300). Anything else is about the statement or the data.
pub fn is_transient(e: &sqlx::Error, backend: Backend) -> bool {
    match e {
        sqlx::Error::Io(_)
        | sqlx::Error::Tls(_)
        | sqlx::Error::Protocol(_)
        | sqlx::Error::PoolTimedOut
        | sqlx::Error::PoolClosed
        | sqlx::Error::WorkerCrashed => true,
        sqlx::Error::Database(db) => db.code().is_some_and(|c| match backend {
            // Primary result code = extended code & 0xff.
            Backend::Sqlite => c
                .parse::<i32>()
                .is_ok_and(|c| matches!(c & 0xff, 5 | 6 | 10 | 14)),
            Backend::Postgres => {
                c.starts_with("08") || matches!(c.as_ref(), "57P01" | "57P02" | "57P03" | "53300")
            }
        }),
        _ => false,
    }
}

/// Checks a PostgreSQL schema name: `[A-Za-z_][A-Za-z0-9_]*`, 1 to 63 characters (so it
/// can be quoted into DDL safely). The error is a message for the user.
pub fn check_schema_name(schema: &str) -> Result<(), String> {
    let ok = (1..=63).contains(&schema.len())
        && schema
            .bytes()
            .next()
            .is_some_and(|b| b.is_ascii_alphabetic() || b == b'_')
        && schema
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_');
    if ok {
        Ok(())
    } else {
        Err(format!(
            "schema name {schema:?}: [A-Za-z_][A-Za-z0-9_]*, at most 63 characters"
        ))
    }
}

/// Why [`postgres_pool`] failed.
#[derive(Debug, thiserror::Error)]
pub enum ConnectError {
    /// The URL or the schema name is malformed.
    #[error("{0}")]
    Invalid(String),
    /// Connecting failed (see [`is_transient`]).
    #[error(transparent)]
    Database(#[from] sqlx::Error),
}

/// A PostgreSQL pool of at most `max_connections`; waiting for a connection is limited
/// to 2 seconds, so an unreachable server is an error rather than a hang. With `schema`
/// (checked by [`check_schema_name`]; the caller creates it) every connection uses it as
/// its `search_path`.
pub async fn postgres_pool(
    url: &str,
    schema: Option<&str>,
    max_connections: u32,
) -> Result<PgPool, ConnectError> {
    let options = PgConnectOptions::from_str(url)
        .map_err(|e| ConnectError::Invalid(format!("PostgreSQL URL: {e}")))?;
    let mut pool = PgPoolOptions::new()
        .max_connections(max_connections)
        .acquire_timeout(Duration::from_secs(2));
    if let Some(schema) = schema {
        check_schema_name(schema).map_err(ConnectError::Invalid)?;
        let search_path = format!("\"{schema}\"");
        pool = pool.after_connect(move |conn, _meta| {
            let search_path = search_path.clone();
            Box::pin(async move {
                sqlx::query("SELECT set_config('search_path', $1, false)")
                    .bind(search_path)
                    .execute(conn)
                    .await?;
                Ok(())
            })
        });
    }
    Ok(pool.connect_with(options).await?)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn schema_names() {
        for good in ["a", "_x", "mem_123", &"s".repeat(63)] {
            assert!(check_schema_name(good).is_ok(), "{good}");
        }
        for bad in ["", "1a", "a-b", "a\"b", "a b", "é", &"s".repeat(64)] {
            assert!(check_schema_name(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn codes_are_read_per_backend() {
        assert!(!is_transient(&sqlx::Error::RowNotFound, Backend::Postgres));
        assert!(is_transient(
            &sqlx::Error::Protocol("eof".into()),
            Backend::Sqlite
        ));
    }

    #[tokio::test]
    async fn a_bad_url_or_schema_is_invalid() {
        assert!(matches!(
            postgres_pool("not a url", None, 1).await,
            Err(ConnectError::Invalid(_))
        ));
        assert!(matches!(
            postgres_pool("postgres://127.0.0.1:1/x", Some("a;b"), 1).await,
            Err(ConnectError::Invalid(_))
        ));
    }
}
