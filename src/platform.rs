//! Target platforms (`os/arch[/variant]`) and how an image index entry is
//! picked for one, following containerd's normalization: `aarch64` is
//! `arm64`, `arm64/v8` is plain `arm64`, `arm` without a variant is `arm/v7`,
//! and an `arm/vN` (or `amd64/vN`) host also runs lower variants.

use std::fmt;
use std::str::FromStr;

use crate::error::{Error, Result};

/// A normalized target platform such as `linux/amd64` or `linux/arm/v7`.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Platform {
    os: String,
    architecture: String,
    variant: Option<String>,
}

impl Platform {
    /// Builds a normalized platform from its parts as an index entry spells them.
    pub fn new(os: &str, architecture: &str, variant: Option<&str>) -> Platform {
        let variant = variant.filter(|v| !v.is_empty());
        let (architecture, variant) = match (architecture, variant) {
            ("x86_64" | "x86-64" | "amd64", Some("v1") | None) => ("amd64", None),
            ("x86_64" | "x86-64" | "amd64", Some(v)) => ("amd64", Some(v.to_owned())),
            ("aarch64" | "arm64", Some("8" | "v8" | "v8.0") | None) => ("arm64", None),
            ("aarch64" | "arm64", Some(v)) => ("arm64", Some(v.to_owned())),
            ("armhf", _) => ("arm", Some("v7".to_owned())),
            ("armel", _) => ("arm", Some("v6".to_owned())),
            ("arm", None | Some("7")) => ("arm", Some("v7".to_owned())),
            ("arm", Some(v @ ("5" | "6" | "8"))) => ("arm", Some(format!("v{v}"))),
            ("i386", v) => ("386", v.map(str::to_owned)),
            (arch, v) => (arch, v.map(str::to_owned)),
        };
        Platform {
            os: os.to_ascii_lowercase(),
            architecture: architecture.to_owned(),
            variant,
        }
    }

    /// The platform this process runs on (Linux and the compiled architecture).
    pub fn host() -> Platform {
        let architecture = match std::env::consts::ARCH {
            "x86_64" => "amd64",
            "aarch64" => "arm64",
            "x86" => "386",
            "powerpc64" if cfg!(target_endian = "little") => "ppc64le",
            "loongarch64" => "loong64",
            other => other,
        };
        Platform::new("linux", architecture, None)
    }

    /// The operating system, e.g. `linux`.
    pub fn os(&self) -> &str {
        &self.os
    }

    /// The CPU architecture in Go/OCI spelling, e.g. `amd64`, `arm64`.
    pub fn architecture(&self) -> &str {
        &self.architecture
    }

    /// The CPU variant, e.g. `v7`, if any after normalization.
    pub fn variant(&self) -> Option<&str> {
        self.variant.as_deref()
    }

    /// Platforms this one can run, best first: itself, then lower variants of
    /// the same architecture (an `arm/v7` host runs `arm/v6` and `arm/v5`).
    pub(crate) fn compatible(&self) -> Vec<Platform> {
        let lower = |start: u32, stop: u32| -> Vec<Platform> {
            (stop..start)
                .rev()
                .map(|n| {
                    let variant = if self.architecture == "amd64" && n == 1 {
                        None
                    } else {
                        Some(format!("v{n}"))
                    };
                    Platform {
                        variant,
                        ..self.clone()
                    }
                })
                .collect()
        };
        let level = self
            .variant
            .as_deref()
            .and_then(|v| v.strip_prefix('v')?.parse::<u32>().ok());
        // Levels above the highest known (arm v8, amd64 v4) count from it, so
        // that a caller's `v4000000000` cannot make a list of billions.
        let mut all = vec![self.clone()];
        match (self.architecture.as_str(), level) {
            ("arm", Some(n)) => all.extend(lower(n.min(9), 5)),
            ("amd64", Some(n)) => all.extend(lower(n.min(5), 1)),
            _ => {}
        }
        all
    }
}

impl FromStr for Platform {
    type Err = Error;

    /// Parses `os/arch` or `os/arch/variant`.
    fn from_str(text: &str) -> Result<Platform> {
        let parts: Vec<&str> = text.split('/').collect();
        let well_formed = matches!(parts.len(), 2 | 3) && parts.iter().all(|p| !p.is_empty());
        if !well_formed {
            return Err(Error::invalid_argument(format!(
                "platform {text:?} is not os/arch or os/arch/variant"
            )));
        }
        Ok(Platform::new(parts[0], parts[1], parts.get(2).copied()))
    }
}

impl fmt::Display for Platform {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.os, self.architecture)?;
        if let Some(variant) = &self.variant {
            write!(f, "/{variant}")?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ErrorKind;

    fn p(text: &str) -> Platform {
        text.parse().unwrap()
    }

    #[test]
    fn normalizes_like_containerd() {
        assert_eq!(p("linux/arm64/v8"), p("linux/arm64"));
        assert_eq!(p("linux/aarch64").to_string(), "linux/arm64");
        assert_eq!(p("linux/arm").to_string(), "linux/arm/v7");
        assert_eq!(p("linux/armhf").to_string(), "linux/arm/v7");
        assert_eq!(p("linux/x86_64").to_string(), "linux/amd64");
        assert_eq!(p("Linux/amd64/v1").to_string(), "linux/amd64");
        assert_eq!(p("linux/amd64/v3").to_string(), "linux/amd64/v3");
    }

    #[test]
    fn lower_variants_are_compatible_best_first() {
        let names: Vec<String> = p("linux/arm/v7")
            .compatible()
            .iter()
            .map(|p| p.to_string())
            .collect();
        assert_eq!(names, ["linux/arm/v7", "linux/arm/v6", "linux/arm/v5"]);
        let names: Vec<String> = p("linux/amd64/v3")
            .compatible()
            .iter()
            .map(|p| p.to_string())
            .collect();
        assert_eq!(names, ["linux/amd64/v3", "linux/amd64/v2", "linux/amd64"]);
        assert_eq!(p("linux/arm64").compatible(), vec![p("linux/arm64")]);
        // Found by the platform fuzz target: this once asked for 160 GB.
        let names: Vec<String> = p("linux/arm/v4000000000")
            .compatible()
            .iter()
            .map(|p| p.to_string())
            .collect();
        assert_eq!(
            names,
            [
                "linux/arm/v4000000000",
                "linux/arm/v8",
                "linux/arm/v7",
                "linux/arm/v6",
                "linux/arm/v5"
            ]
        );
        assert_eq!(p("linux/amd64/v9").compatible().len(), 5);
    }

    #[test]
    fn refuses_malformed_platforms() {
        for bad in ["linux", "linux/", "/amd64", "a/b/c/d", ""] {
            assert!(
                matches!(bad.parse::<Platform>(), Err(ref e) if e.kind() == ErrorKind::InvalidArgument),
                "{bad:?}"
            );
        }
    }
}
