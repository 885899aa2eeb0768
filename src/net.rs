//! net: the one HTTP(S) client ember makes requests with (pushes to
//! profile stores, debuginfod fetches): the system's CA roots (Mozilla's
//! if the system has none) plus an optional CA file, rustls with ring.

use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result};
use bytes::Bytes;
use http_body_util::Full;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;

/// A pooled HTTP/1.1 and HTTP/2 client over TLS or plain TCP.
pub type HttpClient = Client<
    hyper_rustls::HttpsConnector<hyper_util::client::legacy::connect::HttpConnector>,
    Full<Bytes>,
>;

/// A client trusting the system's CA roots (Mozilla's if the system has
/// none) plus `ca_file`; HTTP/2 only with `h2_only` (gRPC).
pub fn https_client(h2_only: bool, ca_file: Option<&std::path::Path>) -> Result<HttpClient> {
    use rustls_pki_types::pem::PemObject;
    let mut roots = rustls::RootCertStore::empty();
    for cert in rustls_native_certs::load_native_certs().certs {
        let _ = roots.add(cert);
    }
    if roots.is_empty() {
        roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned());
    }
    if let Some(path) = ca_file {
        let certs = rustls_pki_types::CertificateDer::pem_file_iter(path)
            .and_then(|it| it.collect::<std::result::Result<Vec<_>, _>>())
            .map_err(|e| {
                anyhow::anyhow!("cannot read CA certificates from {}: {e}", path.display())
            })?;
        for c in certs {
            roots
                .add(c)
                .with_context(|| format!("bad CA certificate in {}", path.display()))?;
        }
    }
    let tls = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()?
    .with_root_certificates(roots)
    .with_no_client_auth();
    let conn = hyper_rustls::HttpsConnectorBuilder::new()
        .with_tls_config(tls)
        .https_or_http();
    let conn = if h2_only {
        conn.enable_http2().build()
    } else {
        conn.enable_http1().enable_http2().build()
    };
    let mut c = Client::builder(TokioExecutor::new());
    c.pool_idle_timeout(Duration::from_secs(30));
    if h2_only {
        c.http2_only(true);
    }
    Ok(c.build(conn))
}
