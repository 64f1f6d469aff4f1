//! A test certificate authority made with openssl: a server certificate for 127.0.0.1
//! and a client certificate, both signed by it.

use super::tool;
use std::path::{Path, PathBuf};

/// The files (PEM) made in the work directory.
#[derive(Debug, Clone)]
pub struct Pki {
    /// The CA's certificate.
    pub ca: PathBuf,
    /// The server's certificate (subjectAltName IP:127.0.0.1).
    pub server_cert: PathBuf,
    /// The server's key.
    pub server_key: PathBuf,
    /// A client certificate (for servers that ask for one).
    pub client_cert: PathBuf,
    /// Its key.
    pub client_key: PathBuf,
}

/// Make the CA and both certificates in `work`. `None` (a visible skip) without openssl.
pub fn make(work: &Path) -> Option<Pki> {
    let openssl = tool("openssl", "openssl")?;
    std::fs::create_dir_all(work).unwrap();
    let w = |p: &str| work.join(p).display().to_string();
    let run = |args: &[&str]| {
        super::run_ok(&openssl, args);
    };
    run(&[
        "req",
        "-x509",
        "-newkey",
        "rsa:2048",
        "-nodes",
        "-days",
        "2",
        "-subj",
        "/CN=keel test CA",
        "-keyout",
        &w("ca.key"),
        "-out",
        &w("ca.pem"),
    ]);
    for (name, cn, ext) in [
        (
            "srv",
            "127.0.0.1",
            "subjectAltName=IP:127.0.0.1\nextendedKeyUsage=serverAuth,clientAuth\n",
        ),
        ("client", "keel-node", "extendedKeyUsage=clientAuth\n"),
    ] {
        run(&[
            "req",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-subj",
            &format!("/CN={cn}"),
            "-keyout",
            &w(&format!("{name}.key")),
            "-out",
            &w(&format!("{name}.csr")),
        ]);
        std::fs::write(work.join(format!("{name}.ext")), ext).unwrap();
        run(&[
            "x509",
            "-req",
            "-in",
            &w(&format!("{name}.csr")),
            "-CA",
            &w("ca.pem"),
            "-CAkey",
            &w("ca.key"),
            "-CAcreateserial",
            "-days",
            "2",
            "-extfile",
            &w(&format!("{name}.ext")),
            "-out",
            &w(&format!("{name}.pem")),
        ]);
    }
    Some(Pki {
        ca: work.join("ca.pem"),
        server_cert: work.join("srv.pem"),
        server_key: work.join("srv.key"),
        client_cert: work.join("client.pem"),
        client_key: work.join("client.key"),
    })
}
