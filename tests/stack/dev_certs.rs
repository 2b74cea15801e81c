//! `scripts/gen-dev-certs`: the development CA is name-constrained to the stack's domain, so
//! even its own key cannot make a certificate that verifies for another name, and that key
//! stays out of the directory nginx mounts (TLS_DIR). An old layout (an unconstrained CA with
//! its key in TLS_DIR) is migrated. Only openssl and the script; no containers.

use std::{
    path::{Path, PathBuf},
    process::{Command, Output},
};

use privaterouter_tests::random_hex;

use crate::harness::{TempDir, repo_root};

const DOMAIN: &str = "privaterouter.test";

fn text(out: &Output) -> String {
    format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr))
}

fn openssl(args: &[&str], dir: &Path) -> Output {
    Command::new("openssl").args(args).current_dir(dir).output().expect("openssl runs")
}

fn ok(args: &[&str], dir: &Path) -> String {
    let out = openssl(args, dir);
    assert!(out.status.success(), "openssl {args:?}: {}", text(&out));
    text(&out)
}

/// `openssl req` with a new P-256 key (`key`): a self-signed certificate when `x509`, else a
/// signing request, to `out`; `extra` arguments appended.
fn new_key(dir: &Path, x509: bool, key: &str, out: &str, subject: &str, extra: &[&str]) {
    let mut args = vec!["req", "-new", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes"];
    if x509 {
        args.extend(["-x509", "-days", "100"]);
    }
    args.extend(["-keyout", key, "-out", out, "-subj", subject]);
    args.extend(extra);
    ok(&args, dir);
}

fn gen_dev_certs(tls: &Path) -> Output {
    Command::new(repo_root().join("scripts/gen-dev-certs"))
        .arg(DOMAIN)
        .env("TLS_DIR", tls)
        .env_remove("DEV_CA_DIR")
        .output()
        .expect("scripts/gen-dev-certs runs")
}

/// A certificate for `name` (a DNS name or an IP address) signed by the CA `ca` (certificate and
/// key, in `dir`); its file name.
fn sign_leaf(dir: &Path, ca_cert: &Path, ca_key: &Path, name: &str) -> PathBuf {
    let stem = name.replace(['*', '.', ':'], "_");
    let (key, csr, ext, pem) =
        (format!("{stem}.key"), format!("{stem}.csr"), format!("{stem}.ext"), format!("{stem}.pem"));
    let kind = if name.parse::<std::net::IpAddr>().is_ok() { "IP" } else { "DNS" };
    std::fs::write(dir.join(&ext), format!("subjectAltName={kind}:{name}\n")).unwrap();
    new_key(dir, false, &key, &csr, &format!("/CN={name}"), &[]);
    let (ca_cert, ca_key) = (ca_cert.to_str().unwrap(), ca_key.to_str().unwrap());
    let serial = format!("{stem}.srl");
    let ca = ["-CA", ca_cert, "-CAkey", ca_key, "-CAserial", &serial, "-CAcreateserial"];
    let args = [&["x509", "-req", "-in", &csr, "-days", "30", "-extfile", &ext, "-out", &pem][..], &ca].concat();
    ok(&args, dir);
    dir.join(pem)
}

fn verify(ca: &Path, cert: &Path, dir: &Path) -> Output {
    openssl(&["verify", "-CAfile", ca.to_str().unwrap(), cert.to_str().unwrap()], dir)
}

/// Files in `dir` that hold a private key, by name.
fn private_keys_in(dir: &Path) -> Vec<String> {
    let mut found: Vec<String> = std::fs::read_dir(dir)
        .unwrap()
        .flatten()
        .filter(|e| std::fs::read_to_string(e.path()).is_ok_and(|t| t.contains("PRIVATE KEY")))
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    found.sort();
    found
}

#[test]
fn the_dev_ca_signs_only_for_the_domain_and_its_key_is_not_in_the_tls_dir() {
    let dir = TempDir::new(&format!("prtest-devca-{}", random_hex(4)));
    let tls = dir.path().join("tls");
    let out = gen_dev_certs(&tls);
    assert!(out.status.success(), "{}", text(&out));

    // nginx mounts TLS_DIR: the only private key there is the server's own.
    assert_eq!(private_keys_in(&tls), ["privkey.pem"], "private keys in the directory nginx mounts");
    let pubkey_of_cert = ok(&["x509", "-in", "tls/fullchain.pem", "-noout", "-pubkey"], dir.path());
    assert_eq!(ok(&["pkey", "-in", "tls/privkey.pem", "-pubout"], dir.path()), pubkey_of_cert);
    let ca_dir = dir.path().join("tls-ca");
    let (ca_cert, ca_key) = (ca_dir.join("dev-ca.pem"), ca_dir.join("dev-ca.key"));
    assert!(ca_key.exists(), "the CA key is kept beside TLS_DIR, in tls-ca/");
    let mode = std::os::unix::fs::PermissionsExt::mode(&std::fs::metadata(&ca_dir).unwrap().permissions());
    assert_eq!(mode & 0o777, 0o700, "tls-ca/ is private");
    assert_eq!(std::fs::read(&ca_cert).unwrap(), std::fs::read(tls.join("dev-ca.pem")).unwrap(), "clients get the CA");

    // The issued certificate, and any other name under the domain, verify against the CA...
    let public_ca = tls.join("dev-ca.pem");
    let out = verify(&public_ca, &tls.join("fullchain.pem"), dir.path());
    assert!(out.status.success(), "{}", text(&out));
    let other = sign_leaf(dir.path(), &ca_cert, &ca_key, &format!("other.{DOMAIN}"));
    let out = verify(&public_ca, &other, dir.path());
    assert!(out.status.success(), "a name under the domain: {}", text(&out));
    // ...and a certificate the CA's own key signs for another name, or for an IP address (which
    // a DNS constraint alone would not cover), does not.
    for name in ["evil.example", &format!("{DOMAIN}.evil.example"), &format!("evil{DOMAIN}"), "8.8.8.8", "::1"] {
        let evil = sign_leaf(dir.path(), &ca_cert, &ca_key, name);
        let out = verify(&public_ca, &evil, dir.path());
        assert!(!out.status.success(), "the dev CA must not vouch for {name}: {}", text(&out));
        assert!(text(&out).contains("subtree violation"), "{name}: {}", text(&out));
    }

    // Run again: nothing changes.
    let before = std::fs::read(tls.join("fullchain.pem")).unwrap();
    let out = gen_dev_certs(&tls);
    assert!(out.status.success() && text(&out).contains("nothing to do"), "{}", text(&out));
    assert_eq!(std::fs::read(tls.join("fullchain.pem")).unwrap(), before);
}

/// The layout an earlier gen-dev-certs left: an unconstrained CA, its key in TLS_DIR.
fn old_layout(tls: &Path) {
    std::fs::create_dir_all(tls).unwrap();
    new_key(
        tls,
        true,
        "dev-ca.key",
        "dev-ca.pem",
        "/CN=old dev CA",
        &["-addext", "basicConstraints=critical,CA:TRUE", "-addext", "keyUsage=critical,keyCertSign,cRLSign"],
    );
    let leaf = sign_leaf(tls, &tls.join("dev-ca.pem"), &tls.join("dev-ca.key"), &format!("api.{DOMAIN}"));
    let key = tls.join(leaf.file_name().unwrap().to_str().unwrap().replace(".pem", ".key"));
    std::fs::rename(&leaf, tls.join("fullchain.pem")).unwrap();
    std::fs::rename(key, tls.join("privkey.pem")).unwrap();
    for entry in std::fs::read_dir(tls).unwrap().flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        if !["dev-ca.key", "dev-ca.pem", "fullchain.pem", "privkey.pem"].contains(&name.as_str()) {
            std::fs::remove_file(entry.path()).unwrap();
        }
    }
}

#[test]
fn gen_dev_certs_moves_an_old_layout_to_a_constrained_ca_outside_the_tls_dir() {
    let dir = TempDir::new(&format!("prtest-devca-{}", random_hex(4)));
    let tls = dir.path().join("tls");
    old_layout(&tls);
    let old_ca = std::fs::read(tls.join("dev-ca.pem")).unwrap();

    let out = gen_dev_certs(&tls);
    assert!(out.status.success(), "{}", text(&out));
    assert!(text(&out).contains("Remove it from every trust store"), "the operator is told: {}", text(&out));
    assert_eq!(private_keys_in(&tls), ["privkey.pem"], "the old CA key left the directory nginx mounts");
    assert_ne!(std::fs::read(tls.join("dev-ca.pem")).unwrap(), old_ca, "a new CA replaces the unconstrained one");
    let ca_text = ok(&["x509", "-in", "tls/dev-ca.pem", "-noout", "-text"], dir.path());
    assert!(ca_text.contains("Name Constraints: critical") && ca_text.contains(&format!("DNS:.{DOMAIN}")), "{ca_text}");
    let out = verify(&tls.join("dev-ca.pem"), &tls.join("fullchain.pem"), dir.path());
    assert!(out.status.success(), "the certificate is reissued by the new CA: {}", text(&out));
}

#[test]
fn gen_dev_certs_removes_a_stray_ca_key_but_keeps_a_real_certificate() {
    let dir = TempDir::new(&format!("prtest-devca-{}", random_hex(4)));
    let tls = dir.path().join("tls");
    old_layout(&tls);
    // The operator since installed a certificate of their own (here: self-signed).
    new_key(&tls, true, "privkey.pem", "fullchain.pem", &format!("/CN=api.{DOMAIN}"), &[]);
    let real = std::fs::read(tls.join("fullchain.pem")).unwrap();

    let out = gen_dev_certs(&tls);
    assert!(out.status.success(), "{}", text(&out));
    assert!(!tls.join("dev-ca.key").exists(), "{}", text(&out));
    assert_eq!(std::fs::read(tls.join("fullchain.pem")).unwrap(), real, "a real certificate is never replaced");
}
