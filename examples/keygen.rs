//! Prints a new API key once, and the hash to put in the configuration file.
//!
//! ```text
//! cargo run --example keygen --features auth -- [--prefix tsk] [--id demoread] [--hmac-secret-env VAR]
//! ```

use tower_shield::auth::{ApiKeyFormat, KeyHasher};

fn main() {
    let mut prefix = "tsk".to_owned();
    let mut id: Option<String> = None;
    let mut hmac_env: Option<String> = None;
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        match a.as_str() {
            "--prefix" => prefix = args.next().unwrap_or_else(|| usage()),
            "--id" => id = Some(args.next().unwrap_or_else(|| usage())),
            "--hmac-secret-env" => hmac_env = Some(args.next().unwrap_or_else(|| usage())),
            _ => usage(),
        }
    }
    let format = ApiKeyFormat::new(&prefix, 40).unwrap_or_else(|e| fail(&e.to_string()));
    let hasher = match &hmac_env {
        Some(var) => {
            let secret = std::env::var(var).unwrap_or_else(|_| fail(&format!("{var} is not set")));
            KeyHasher::hmac_sha256(secret.as_bytes()).unwrap_or_else(|e| fail(&e.to_string()))
        }
        None => KeyHasher::sha256(),
    };
    let key = match id {
        Some(id) => format
            .generate_with_id(&id)
            .unwrap_or_else(|e| fail(&e.to_string())),
        None => format.generate(),
    };
    println!("API key (give it to the client now; it is not stored anywhere):");
    println!("  {}", key.secret());
    println!();
    println!("Configuration entry (the server keeps only the hash):");
    println!("  [[auth.api_keys.keys]]");
    println!("  id = \"{}\"", key.key_id());
    println!("  hash = \"{}\"", hasher.hash(key.secret()));
    println!("  scopes = []");
}

fn usage() -> ! {
    fail("usage: keygen [--prefix tsk] [--id KEYID] [--hmac-secret-env VAR]")
}

fn fail(msg: &str) -> ! {
    eprintln!("{msg}");
    std::process::exit(2)
}
