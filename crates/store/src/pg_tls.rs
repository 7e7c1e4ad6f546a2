//! TLS to PostgreSQL (rustls): chosen by the URL's `sslmode`; the server's
//! certificate is checked against `store.ca_file` when given, else against
//! the Mozilla root certificates (webpki-roots).

use crate::{Result, StoreError};
use rustls::RootCertStore;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::CertificateDer;
use std::path::Path;
use tokio_postgres_rustls::MakeRustlsConnect;

pub fn connector(ca_file: Option<&Path>) -> Result<MakeRustlsConnect> {
    let mut roots = RootCertStore::empty();
    match ca_file {
        Some(path) => {
            for cert in CertificateDer::pem_file_iter(path)
                .map_err(|e| StoreError::Invalid(format!("store.ca_file {}: {e}", path.display())))?
            {
                let cert =
                    cert.map_err(|e| StoreError::Invalid(format!("store.ca_file {}: {e}", path.display())))?;
                roots
                    .add(cert)
                    .map_err(|e| StoreError::Invalid(format!("store.ca_file {}: {e}", path.display())))?;
            }
        }
        None => roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned()),
    }
    let provider = std::sync::Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| StoreError::Invalid(format!("TLS: {e}")))?
        .with_root_certificates(roots)
        .with_no_client_auth();
    Ok(MakeRustlsConnect::new(config))
}
