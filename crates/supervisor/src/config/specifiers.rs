//! `%` specifiers (`%n`, `%i`, `%H`, ...) in option values.

/// A `%` that does not start a specifier the supervisor knows.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum SpecifierError {
    #[error("{text:?}: lone '%' at the end (write %% for a percent sign)")]
    LonePercent { text: String },
    #[error("{text:?}: unknown specifier %{specifier} (the process supervisor knows %n %N %p %P %i %I %f %H %l %m %b %u %U %h %t %T %V %S %C %L %E; write %% for a percent sign)")]
    Unknown { text: String, specifier: char },
}

/// What `%` specifiers expand to for one unit.
#[derive(Clone, Debug, Default)]
pub struct Specifiers {
    pub name: String,
    pub hostname: String,
    pub machine_id: String,
    pub boot_id: String,
    pub user: String,
    pub uid: String,
    pub home: String,
}

impl Specifiers {
    /// Splits `prefix@instance.suffix` without validating: the name was validated by fleet.
    fn parts(&self) -> (&str, &str, &str) {
        let (stem, _suffix) = self.name.rsplit_once('.').unwrap_or((&self.name, ""));
        match stem.split_once('@') {
            Some((prefix, instance)) => (stem, prefix, instance),
            None => (stem, stem, ""),
        }
    }

    /// systemd's specifier expansion; an unknown specifier is an error, as in systemd.
    pub fn expand(&self, s: &str) -> Result<String, SpecifierError> {
        let (stem, prefix, instance) = self.parts();
        let mut out = String::with_capacity(s.len());
        let mut chars = s.chars();
        while let Some(c) = chars.next() {
            if c != '%' {
                out.push(c);
                continue;
            }
            let Some(spec) = chars.next() else {
                return Err(SpecifierError::LonePercent { text: s.into() });
            };
            match spec {
                '%' => out.push('%'),
                'n' => out.push_str(&self.name),
                'N' => out.push_str(stem),
                'p' | 'P' => out.push_str(prefix),
                'i' | 'I' => out.push_str(instance),
                'f' => {
                    out.push('/');
                    out.push_str(if instance.is_empty() {
                        prefix
                    } else {
                        instance
                    });
                }
                'H' | 'l' => out.push_str(&self.hostname),
                'm' => out.push_str(&self.machine_id),
                'b' => out.push_str(&self.boot_id),
                'u' => out.push_str(&self.user),
                'U' => out.push_str(&self.uid),
                'h' => out.push_str(&self.home),
                't' => out.push_str("/run"),
                'T' => out.push_str("/tmp"),
                'V' => out.push_str("/var/tmp"),
                'S' => out.push_str("/var/lib"),
                'C' => out.push_str("/var/cache"),
                'L' => out.push_str("/var/log"),
                'E' => out.push_str("/etc"),
                other => {
                    return Err(SpecifierError::Unknown {
                        text: s.into(),
                        specifier: other,
                    })
                }
            }
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn specifiers() {
        let spec = Specifiers {
            name: "web@8080.service".into(),
            hostname: "h1".into(),
            ..Default::default()
        };
        assert_eq!(
            spec.expand("%n %N %p %i %H %% %f").unwrap(),
            "web@8080.service web@8080 web 8080 h1 % /8080"
        );
        assert!(spec.expand("date +%s").is_err());
        assert!(spec.expand("trailing %").is_err());
    }
}
