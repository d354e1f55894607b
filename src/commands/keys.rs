//! `airlock keygen` and `airlock token`: local stand-ins for the coordinator's token issuing.

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use airlock_protocol::token::{self, Claims, Role};
use anyhow::Context as _;

#[derive(Debug, clap::Args)]
pub struct KeygenArgs {
    /// Folder to write `token-signing.pem` (private, mode 0600) and `token-verifying.pem` into.
    #[arg(long, value_name = "DIR", default_value = ".")]
    out: PathBuf,
}

#[derive(Debug, clap::Args)]
pub struct TokenArgs {
    /// The private key (PKCS#8 PEM), as `airlock keygen` writes it.
    #[arg(long, value_name = "FILE")]
    key: PathBuf,
    /// The document the token opens.
    #[arg(long)]
    doc: String,
    /// Who the token speaks for.
    #[arg(long, default_value = "local")]
    user: String,
    /// owner, editor or viewer.
    #[arg(long, default_value = "editor")]
    role: Role,
    /// The allocation epoch the node serves (0 for a standalone node).
    #[arg(long, default_value_t = 0)]
    epoch: u64,
    /// How long the token stays valid, in seconds.
    #[arg(long, default_value_t = 3600, value_name = "SECONDS")]
    ttl: u64,
}

pub fn keygen(args: KeygenArgs) -> anyhow::Result<ExitCode> {
    let (private, public) = write_key_pair(&args.out)?;
    println!("wrote {} (keep it secret)", private.display());
    println!(
        "wrote {} (give it to nodes: --token-public-key)",
        public.display()
    );
    Ok(ExitCode::SUCCESS)
}

/// Writes a fresh key pair into `dir` and returns the two paths (private, public).
pub fn write_key_pair(dir: &Path) -> anyhow::Result<(PathBuf, PathBuf)> {
    use std::io::Write as _;
    use std::os::unix::fs::OpenOptionsExt as _;
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let key = ed25519_dalek::SigningKey::generate(&mut rand::rngs::OsRng);
    let private = dir.join("token-signing.pem");
    let public = dir.join("token-verifying.pem");
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(&private)
        .with_context(|| format!("writing {}", private.display()))?;
    file.write_all(token::signing_key_to_pem(&key)?.as_bytes())?;
    std::fs::write(&public, token::verifying_key_to_pem(&key.verifying_key())?)
        .with_context(|| format!("writing {}", public.display()))?;
    Ok((private, public))
}

pub fn token(args: TokenArgs) -> anyhow::Result<ExitCode> {
    let pem = std::fs::read_to_string(&args.key)
        .with_context(|| format!("reading the signing key {}", args.key.display()))?;
    let key = token::signing_key_from_pem(&pem)
        .with_context(|| format!("{} is not a signing key", args.key.display()))?;
    let claims = Claims {
        doc: args.doc,
        user: args.user,
        role: args.role,
        epoch: args.epoch,
        exp: unix_now() + args.ttl,
    };
    println!("{}", token::sign(&claims, &key));
    Ok(ExitCode::SUCCESS)
}

/// Seconds since the Unix epoch.
pub fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or(Duration::ZERO)
        .as_secs()
}
