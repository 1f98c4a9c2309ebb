//! Secrets from the environment or from a file (`<NAME>_FILE`, Docker's convention for
//! secrets mounted under `/run/secrets/`).

use std::path::Path;

/// A secret value, given directly or as a file; the file wins when both are set. A trailing
/// newline (which every editor and `echo` adds) is not part of the secret.
pub fn resolve(name: &str, value: Option<String>, file: Option<&Path>) -> anyhow::Result<Option<String>> {
    match file {
        Some(path) => {
            let content = std::fs::read_to_string(path)
                .map_err(|e| anyhow::anyhow!("reading {name}_FILE {}: {e}", path.display()))?;
            Ok(Some(content.trim_end_matches(['\n', '\r']).to_owned()))
        }
        None => Ok(value),
    }
}

/// A URL with its password replaced, fit for logs and error messages.
pub fn redact_url(url: &str) -> String {
    match (url.find("://"), url.rfind('@')) {
        (Some(scheme_end), Some(at)) if at > scheme_end => {
            let userinfo = &url[scheme_end + 3..at];
            let user = userinfo.split(':').next().unwrap_or("");
            format!("{}{user}:***{}", &url[..scheme_end + 3], &url[at..])
        }
        _ => url.to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_secret_file_wins_and_loses_its_newline() {
        let dir = std::env::temp_dir().join(format!("voting-secret-{}", std::process::id()));
        std::fs::write(&dir, "s3cret\n").unwrap();
        let resolved = resolve("X", Some("plain".into()), Some(&dir)).unwrap();
        std::fs::remove_file(&dir).unwrap();
        assert_eq!(resolved.as_deref(), Some("s3cret"));
        assert_eq!(resolve("X", Some("plain".into()), None).unwrap().as_deref(), Some("plain"));
    }

    #[test]
    fn passwords_never_reach_logs() {
        assert_eq!(redact_url("redis://:pw@h:6379/0"), "redis://:***@h:6379/0");
        assert_eq!(redact_url("postgres://u:pw@h/db"), "postgres://u:***@h/db");
        assert_eq!(redact_url("redis://h:6379"), "redis://h:6379");
    }
}
