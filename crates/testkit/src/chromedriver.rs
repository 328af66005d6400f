//! A real `chromedriver` (Debian's `chromium-driver`) on a free loopback port, for tests that
//! drive a headless Chromium over WebDriver; killed by PID when dropped.
//!
//! ```no_run
//! let Some(driver) = testkit::chromedriver::ChromeDriver::start()? else {
//!     return Ok(()); // not installed: `testkit::skip` was told
//! };
//! println!("WebDriver at {}", driver.url());
//! # Ok::<(), anyhow::Error>(())
//! ```

use anyhow::{bail, Context, Result};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// Where Debian installs the driver and the browser.
const DRIVER: &str = "/usr/bin/chromedriver";
pub const CHROMIUM: &str = "/usr/bin/chromium";

/// A running chromedriver.
pub struct ChromeDriver {
    child: Child,
    port: u16,
    dir: tempfile::TempDir,
}

impl ChromeDriver {
    /// Starts chromedriver, or returns `None` after [`crate::skip`] when it or Chromium is not
    /// installed (`scripts/install-deps` installs both).
    pub fn start() -> Result<Option<ChromeDriver>> {
        for path in [DRIVER, CHROMIUM] {
            if !PathBuf::from(path).is_file() {
                crate::skip(&format!(
                    "{path} is missing: install chromium and chromium-driver (scripts/install-deps)"
                ));
                return Ok(None);
            }
        }
        let dir = tempfile::tempdir().context("temp dir for chromedriver")?;
        let port = {
            let l = TcpListener::bind("127.0.0.1:0").context("binding a free loopback port")?;
            l.local_addr().context("reading the bound port")?.port()
        };
        let log = std::fs::File::create(dir.path().join("chromedriver.log"))
            .context("creating chromedriver's log")?;
        let child = Command::new(DRIVER)
            .arg(format!("--port={port}"))
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .with_context(|| format!("starting {DRIVER}"))?;
        let driver = ChromeDriver { child, port, dir };
        let addr = SocketAddr::from(([127, 0, 0, 1], port));
        let end = Instant::now() + Duration::from_secs(30);
        while TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_err() {
            if Instant::now() >= end {
                bail!(
                    "chromedriver did not listen on {addr} within 30 s; its log:\n{}",
                    driver.log()
                );
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        Ok(Some(driver))
    }

    /// The WebDriver endpoint, `http://127.0.0.1:PORT`.
    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// What chromedriver logged, for a failing test's message.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("chromedriver.log")).unwrap_or_default()
    }

    /// A directory of this driver's own, for the browser's profile.
    pub fn profile_dir(&self) -> PathBuf {
        self.dir.path().join("profile")
    }
}

impl Drop for ChromeDriver {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
