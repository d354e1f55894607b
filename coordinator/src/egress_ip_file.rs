//! The egress IP set files operators write for `airlock coordinator egress-ips --set`: a map
//! of tenant → addresses, as JSON or TOML.

use std::collections::BTreeMap;
use std::net::IpAddr;

/// Why an egress IP set file does not read.
#[derive(Debug, thiserror::Error)]
pub enum EgressIpFileError {
    #[error("not a JSON object of tenant → list of IP addresses: {0}")]
    Json(#[source] serde_json::Error),
    #[error("not a TOML table of tenant → list of IP addresses: {0}")]
    Toml(#[source] toml::de::Error),
}

/// Reads the egress IP sets an operator wrote: a map of tenant → addresses, as JSON
/// (`{"acme": ["203.0.113.10"]}`, when the text starts with `{`) or TOML
/// (`acme = ["203.0.113.10"]`). Addresses must parse; tenant names are checked by the API.
pub fn parse_egress_ip_file(
    text: &str,
) -> Result<BTreeMap<String, Vec<IpAddr>>, EgressIpFileError> {
    if text.trim_start().starts_with('{') {
        serde_json::from_str(text).map_err(EgressIpFileError::Json)
    } else {
        toml::from_str(text).map_err(EgressIpFileError::Toml)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn egress_ip_files_read_as_json_or_toml() {
        let json = r#"{"acme": ["203.0.113.10", "2001:db8::10"], "globex": []}"#;
        let toml = "# the region's static IPs\nacme = [\"203.0.113.10\", \"2001:db8::10\"]\n\
                    globex = []\n\"team.eu\" = [\"198.51.100.7\"]\n";
        let from_json = parse_egress_ip_file(json).unwrap();
        let from_toml = parse_egress_ip_file(toml).unwrap();
        assert_eq!(from_json["acme"], from_toml["acme"]);
        assert_eq!(
            from_toml["acme"][1],
            "2001:db8::10".parse::<IpAddr>().unwrap()
        );
        assert!(from_toml["globex"].is_empty());
        assert_eq!(from_toml.len(), 3);
        assert!(matches!(
            parse_egress_ip_file(r#"{"acme": ["203.0.113.300"]}"#),
            Err(EgressIpFileError::Json(_))
        ));
        assert!(matches!(
            parse_egress_ip_file("acme = \"203.0.113.1\""),
            Err(EgressIpFileError::Toml(_))
        ));
    }
}
