//! A small pool of PostgreSQL connections, each set to the store's schema
//! (and TLS when asked), and the mapping of PostgreSQL errors.
//!
//! Knows nothing of documents.

use super::*;

impl From<postgres::Error> for StoreError {
    fn from(e: postgres::Error) -> Self {
        match e.as_db_error() {
            Some(db) => StoreError::Postgres(format!("{}: {}", db.code().code(), db.message())),
            // The client's own message is only the kind ("error connecting
            // to server", "connection closed"); the cause is its source.
            None => match std::error::Error::source(&e) {
                Some(cause) => StoreError::Postgres(format!("{e}: {cause}")),
                None => StoreError::Postgres(e.to_string()),
            },
        }
    }
}

/// The connection settings and the pool of idle connections.
pub(crate) struct Pool {
    pub(crate) config: postgres::Config,
    pub(crate) schema: String,
    pub(crate) ca_file: Option<std::path::PathBuf>,
    pub(crate) statement_timeout: Duration,
    pub(crate) idle: Mutex<Vec<Client>>,
    pub(crate) keep: usize,
}

/// A pooled connection, back to the pool when dropped (unless it broke).
pub(crate) struct Conn<'a> {
    pub(crate) pool: &'a Pool,
    pub(crate) client: Option<Client>,
}

impl std::ops::Deref for Conn<'_> {
    type Target = Client;
    fn deref(&self) -> &Client {
        self.client.as_ref().expect("held until drop")
    }
}

impl std::ops::DerefMut for Conn<'_> {
    fn deref_mut(&mut self) -> &mut Client {
        self.client.as_mut().expect("held until drop")
    }
}

impl Drop for Conn<'_> {
    fn drop(&mut self) {
        if let Some(c) = self.client.take() {
            if !c.is_closed() {
                let mut idle = self.pool.idle.lock().unwrap_or_else(|p| p.into_inner());
                if idle.len() < self.pool.keep {
                    idle.push(c);
                }
            }
        }
    }
}

impl Pool {
    pub(crate) fn get(&self) -> Result<Conn<'_>> {
        loop {
            let idle = self.idle.lock().unwrap_or_else(|p| p.into_inner()).pop();
            match idle {
                // A connection the server closed (restart, idle timeout) is dropped.
                Some(c) if c.is_closed() => continue,
                Some(c) => return Ok(Conn { pool: self, client: Some(c) }),
                None => break,
            }
        }
        let mut client = self.connect()?;
        client.batch_execute(&format!(
            "SET search_path TO \"{}\", public; SET statement_timeout = {}",
            self.schema,
            self.statement_timeout.as_millis()
        ))?;
        Ok(Conn { pool: self, client: Some(client) })
    }

    /// Runs `f` on a pooled connection; when the connection broke or the
    /// server went away (a restart: no answer, or SQLSTATE class 08 or 57),
    /// runs it again on a fresh connection, for about 15 s in all. Only for
    /// statements that may run twice, such as recording a job's end.
    pub(crate) fn retrying<T>(
        &self,
        mut f: impl FnMut(&mut Client) -> Result<T, postgres::Error>,
    ) -> Result<T> {
        let mut wait = Duration::from_millis(250);
        let mut tries = 0;
        loop {
            tries += 1;
            let outcome = match self.get() {
                Ok(mut conn) => f(&mut conn).map_err(|e| {
                    let transient =
                        e.as_db_error().is_none_or(|db| matches!(&db.code().code()[..2], "08" | "57"));
                    (StoreError::from(e), transient)
                }),
                // No connection could be made: the server is down or restarting.
                Err(e) => Err((e, true)),
            };
            match outcome {
                Ok(v) => return Ok(v),
                Err((e, true)) if tries < 7 => {
                    tracing::warn!("{e}; trying again in {} ms", wait.as_millis());
                    std::thread::sleep(wait);
                    wait = (wait * 2).min(Duration::from_secs(4));
                }
                Err((e, _)) => return Err(e),
            }
        }
    }

    pub(crate) fn connect(&self) -> Result<Client> {
        use postgres::config::SslMode;
        if self.config.get_ssl_mode() == SslMode::Disable {
            return Ok(self.config.connect(NoTls)?);
        }
        let tls = crate::pg_tls::connector(self.ca_file.as_deref())?;
        match self.config.connect(tls) {
            Ok(c) => Ok(c),
            // `prefer` falls back to a plain connection, as libpq does.
            Err(e) if self.config.get_ssl_mode() == SslMode::Prefer => {
                tracing::debug!("TLS to PostgreSQL failed ({e}); sslmode=prefer: connecting without");
                Ok(self.config.connect(NoTls)?)
            }
            Err(e) => Err(e.into()),
        }
    }
}
