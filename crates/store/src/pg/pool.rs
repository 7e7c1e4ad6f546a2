//! A small pool of PostgreSQL connections, each set to the store's schema
//! (and TLS when asked), and the mapping of PostgreSQL errors.
//!
//! Knows nothing of documents.

use super::*;

impl From<postgres::Error> for StoreError {
    fn from(e: postgres::Error) -> Self {
        match e.as_db_error() {
            Some(db) => StoreError::Postgres(format!("{}: {}", db.code().code(), db.message())),
            None => StoreError::Postgres(e.to_string()),
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
