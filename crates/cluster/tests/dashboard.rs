//! The dashboard as a person sees it: a real headless Chromium (driven over WebDriver by
//! chromium-driver) on `/ui` of one of three real fleetd over etcd. The pages render, the
//! machines page with each machine's last lease renewal; a unit started with `fleetctl` appears
//! on the units page without a reload; its machine killed, the unit moves to another machine on
//! screen. A screenshot of the units page is saved as
//! `ui-units.png` in the target dir.

use anyhow::{ensure, Context, Result};
use cluster::binary::fleetctl_binary;
use cluster::cleanup::TAG_VAR;
use cluster::{wait_for, Cluster, ClusterSpec, DEFAULT_DEADLINE};
use fantoccini::Client;
use serde_json::{json, Value};
use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Instant;
use testkit::chromedriver::{ChromeDriver, CHROMIUM};

/// Where the screenshot goes: the target dir (the parent of this test's own temp dir there).
fn screenshot_path() -> PathBuf {
    let tmp = PathBuf::from(env!("CARGO_TARGET_TMPDIR"));
    tmp.parent()
        .map(PathBuf::from)
        .unwrap_or(tmp)
        .join("ui-units.png")
}

async fn browser(driver: &ChromeDriver) -> Result<Client> {
    let mut caps = serde_json::Map::new();
    caps.insert(
        "goog:chromeOptions".into(),
        json!({
            "binary": CHROMIUM,
            "args": ["--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                     "--window-size=1280,800",
                     format!("--user-data-dir={}", driver.profile_dir().display())],
        }),
    );
    let connector = hyper_util::client::legacy::connect::HttpConnector::new();
    fantoccini::ClientBuilder::new(connector)
        .capabilities(caps)
        .connect(&driver.url())
        .await
        .with_context(|| {
            format!(
                "starting Chromium through chromedriver; its log:\n{}",
                driver.log()
            )
        })
}

/// Runs `script` in the page and returns what it returned.
async fn js(b: &Client, script: &str) -> Result<Value> {
    b.execute(script, vec![])
        .await
        .context("running a script in the page")
}

/// The units page's rows: unit -> the machine id of its MACHINE cell.
async fn unit_rows(b: &Client) -> Result<BTreeMap<String, String>> {
    let v = js(
        b,
        "return [...document.querySelectorAll('#units tbody tr')].map(tr => \
         [tr.dataset.unit, tr.querySelector('[data-machine]').dataset.machine]);",
    )
    .await?;
    Ok(serde_json::from_value::<Vec<(String, String)>>(v)?
        .into_iter()
        .collect())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_dashboard_shows_units_appear_and_move() {
    let Some(driver) = ChromeDriver::start().expect("starting chromedriver") else {
        return;
    };
    // m0 region a serves the browser; the unit goes to m1 or m2 (region b).
    let spec = ClusterSpec::with_regions(&["a", "b", "b"]);
    let c = Cluster::start(spec).await.expect("starting the cluster");
    let b = browser(&driver).await.unwrap();
    let result = scenario(&c, &b).await;
    // The browser goes whatever happened, so that no Chromium outlives the test.
    let _ = b.close().await;
    result.unwrap();
}

async fn scenario(c: &Cluster, b: &Client) -> Result<()> {
    let ui = format!("{}/ui", c.machine(0).tcp_endpoint());
    b.goto(&format!("{ui}#/machines")).await?;
    let ids: Vec<String> = c.machines().iter().map(|m| m.id.clone()).collect();
    wait_for("the machines page lists three machines", DEFAULT_DEADLINE, || async {
        let v = js(b, "return [...document.querySelectorAll('#machines tbody tr')].map(tr => tr.dataset.machine);")
            .await
            .map_err(|e| format!("{e:#}"))?;
        let mut shown: Vec<String> = serde_json::from_value(v).map_err(|e| e.to_string())?;
        shown.sort();
        if shown == ids { Ok(()) } else { Err(format!("{shown:?}")) }
    })
    .await?;
    // Each machine's LEASE cell shows its last renewal (read from /fleet/v1/leases).
    wait_for(
        "each machine's lease renewal on the machines page",
        DEFAULT_DEADLINE,
        || async {
            let v = js(
                b,
                "return [...document.querySelectorAll('#machines tbody tr')].map(tr => \
                       tr.querySelector('td.lease').textContent);",
            )
            .await
            .map_err(|e| format!("{e:#}"))?;
            let cells: Vec<String> = serde_json::from_value(v).map_err(|e| e.to_string())?;
            if cells.len() == ids.len() && cells.iter().all(|c| c.contains("ago")) {
                Ok(())
            } else {
                Err(format!("{cells:?}"))
            }
        },
    )
    .await?;

    b.goto(&format!("{ui}#/units")).await?;
    wait_for("the units page and a live event stream", DEFAULT_DEADLINE, || async {
        let v = js(b, "return [!!document.querySelector('#units'), document.getElementById('live').textContent];")
            .await
            .map_err(|e| format!("{e:#}"))?;
        if v == json!([true, "live"]) { Ok(()) } else { Err(v.to_string()) }
    })
    .await?;

    // A unit started with fleetctl appears without a reload.
    let dir = tempfile::tempdir()?;
    std::fs::write(
        dir.path().join("hello.service"),
        format!(
            "[Unit]\nDescription=dashboard test\n\n[Service]\nEnvironment={TAG_VAR}={}\n\
             ExecStart=/bin/sleep infinity\n\n[X-Fleet]\nMachineMetadata=region=b\n",
            c.tag()
        ),
    )?;
    let fleetctl = fleetctl_binary()?;
    let started = Instant::now();
    let out = tokio::process::Command::new(fleetctl)
        .args(["start", "--no-block", "hello.service"])
        .env("FLEETCTL_ENDPOINT", c.machine(0).endpoint())
        .current_dir(dir.path())
        .output()
        .await?;
    ensure!(
        out.status.success(),
        "fleetctl start: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    wait_for("hello.service on screen", DEFAULT_DEADLINE, || async {
        let rows = unit_rows(b).await.map_err(|e| format!("{e:#}"))?;
        if rows.contains_key("hello.service") {
            Ok(())
        } else {
            Err(format!("{rows:?}"))
        }
    })
    .await?;
    println!(
        "FIGURE dashboard: unit on screen {} ms after fleetctl start was run",
        started.elapsed().as_millis()
    );
    let first = wait_for(
        "hello.service on screen, placed",
        DEFAULT_DEADLINE,
        || async {
            let rows = unit_rows(b).await.map_err(|e| format!("{e:#}"))?;
            match rows.get("hello.service") {
                Some(m) if !m.is_empty() => Ok(m.clone()),
                _ => Err(format!("{rows:?}")),
            }
        },
    )
    .await?;
    println!(
        "FIGURE dashboard: unit placed on screen {} ms after fleetctl start was run",
        started.elapsed().as_millis()
    );
    let first_ix = c
        .index_of(&first)
        .context("the unit's machine is not one of the cluster's")?;
    ensure!(first_ix != 0, "hello.service went to m0, whose region is a");
    wait_for("hello.service active on screen", DEFAULT_DEADLINE, || async {
        let v = js(b, "const tr = document.querySelector('#units tr[data-unit=\"hello.service\"]'); return tr ? tr.children[3].textContent : null;")
            .await
            .map_err(|e| format!("{e:#}"))?;
        if v == json!("active") { Ok(()) } else { Err(v.to_string()) }
    })
    .await?;
    let png = b.screenshot().await.context("taking a screenshot")?;
    let path = screenshot_path();
    std::fs::write(&path, png).with_context(|| format!("writing {}", path.display()))?;
    println!("screenshot of the units page: {}", path.display());

    // Its machine killed, the unit moves on screen.
    let killed = Instant::now();
    c.machine(first_ix).kill();
    let moved = wait_for(
        "hello.service moved on screen",
        DEFAULT_DEADLINE,
        || async {
            let rows = unit_rows(b).await.map_err(|e| format!("{e:#}"))?;
            match rows.get("hello.service") {
                Some(m) if !m.is_empty() && *m != first => Ok(m.clone()),
                _ => Err(format!("{rows:?}")),
            }
        },
    )
    .await?;
    println!(
        "FIGURE dashboard: unit moved on screen {} ms after its machine was killed (agent TTL 3 s)",
        killed.elapsed().as_millis()
    );
    ensure!(moved != c.machine(0).id, "moved to m0, whose region is a");

    // The unit's page: its file, its state per machine.
    b.goto(&format!("{ui}#/unit/hello.service")).await?;
    wait_for("the unit page shows the file", DEFAULT_DEADLINE, || async {
        let v = js(
            b,
            "const f = document.getElementById('unit-file'); return f ? f.textContent : null;",
        )
        .await
        .map_err(|e| format!("{e:#}"))?;
        match v.as_str() {
            Some(t) if t.contains("ExecStart=/bin/sleep infinity") => Ok(()),
            _ => Err(v.to_string()),
        }
    })
    .await?;
    // Its output is kept by the machine that runs it, which the page names (m0 serves it).
    wait_for(
        "the unit page says where the output is",
        DEFAULT_DEADLINE,
        || async {
            let v = js(
            b,
            "const o = document.getElementById('unit-output'); return o ? o.textContent : null;",
        )
        .await
        .map_err(|e| format!("{e:#}"))?;
            match v.as_str() {
                Some(t) if t.contains(&format!("runs on machine {moved}")) => Ok(()),
                _ => Err(v.to_string()),
            }
        },
    )
    .await?;

    // A machine drained with fleetctl shows as drained on the machines page, without a reload.
    b.goto(&format!("{ui}#/machines")).await?;
    let m0 = c.machine(0).id.clone();
    let out = tokio::process::Command::new(fleetctl_binary()?)
        .args(["drain", "--no-block", &m0])
        .env("FLEETCTL_ENDPOINT", c.machine(0).endpoint())
        .output()
        .await?;
    ensure!(
        out.status.success(),
        "fleetctl drain: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let script = format!(
        "const tr = document.querySelector('#machines tr[data-machine=\"{m0}\"]'); \
         return tr ? tr.lastElementChild.textContent : null;"
    );
    wait_for("m0 drained on screen", DEFAULT_DEADLINE, || async {
        let v = js(b, &script).await.map_err(|e| format!("{e:#}"))?;
        match v.as_str() {
            Some(t) if t.starts_with("drained") => Ok(()),
            _ => Err(v.to_string()),
        }
    })
    .await?;
    Ok(())
}

/// 10,000 units (submitted inactive, so that no process runs): the units page loads them all,
/// a filter keystroke and a page turn redraw within the page (figures printed, not asserted),
/// and a unit started meanwhile still appears.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_units_page_at_10000_units() {
    let Some(driver) = ChromeDriver::start().expect("starting chromedriver") else {
        return;
    };
    let c = Cluster::start(ClusterSpec {
        machines: 1,
        ..Default::default()
    })
    .await
    .expect("starting the cluster");
    let b = browser(&driver).await.unwrap();
    let result = many_units(&c, &b).await;
    let _ = b.close().await;
    result.unwrap();
}

async fn many_units(c: &Cluster, b: &Client) -> Result<()> {
    use futures::StreamExt;
    const N: usize = 10_000;
    let client = c.machine(0).client();
    let submitted = Instant::now();
    let mut puts = futures::stream::iter((0..N).map(|i| {
        let unit = cluster::units::with_state(
            c.service(&format!("bulk-{i:05}.service"), &[]),
            api::TargetState::Inactive,
        );
        let client = client.clone();
        async move { client.create_or_update_unit(&unit).await }
    }))
    .buffer_unordered(32);
    while let Some(r) = puts.next().await {
        r.context("submitting a unit")?;
    }
    println!(
        "FIGURE dashboard: {N} units submitted in {} ms",
        submitted.elapsed().as_millis()
    );

    let ui = format!("{}/ui#/units", c.machine(0).tcp_endpoint());
    let opened = Instant::now();
    b.goto(&ui).await?;
    wait_for(
        "all units counted on the units page",
        DEFAULT_DEADLINE,
        || async {
            let v = js(
                b,
                "const p = document.getElementById('pager'); return p ? p.textContent : null;",
            )
            .await
            .map_err(|e| format!("{e:#}"))?;
            match v.as_str() {
                Some(t) if t.contains(&format!("of {N} units")) => Ok(()),
                _ => Err(v.to_string()),
            }
        },
    )
    .await?;
    println!(
        "FIGURE dashboard: units page with {N} units drawn {} ms after it was opened",
        opened.elapsed().as_millis()
    );
    let rows = unit_rows(b).await?;
    ensure!(
        rows.len() == 100,
        "one page is 100 rows, not {}",
        rows.len()
    );

    // A keystroke in the name filter and a page turn, timed inside the page.
    let v = js(
        b,
        "const f = document.getElementById('filter-name'); const t = performance.now(); \
         f.value = 'bulk-0999'; f.dispatchEvent(new Event('input')); \
         const ms = performance.now() - t; \
         const text = document.getElementById('pager').textContent; \
         f.value = ''; f.dispatchEvent(new Event('input')); \
         const t2 = performance.now(); document.querySelector('#pager button:last-child').click(); \
         return [ms, text, performance.now() - t2, document.getElementById('pager').textContent];",
    )
    .await?;
    println!(
        "FIGURE dashboard: at {N} units, filter redraw {:.0} ms, page turn {:.0} ms",
        v[0].as_f64().unwrap_or(-1.0),
        v[2].as_f64().unwrap_or(-1.0)
    );
    ensure!(
        v[1].as_str()
            .is_some_and(|t| t.contains(&format!("(10 of {N} units)"))),
        "the filter bulk-0999 should leave 10 units: {v}"
    );
    ensure!(
        v[3].as_str()
            .is_some_and(|t| t.starts_with("‹ prevpage 2 of 100")),
        "next should show page 2 of 100: {v}"
    );

    // A unit submitted now appears (first in name order) without a reload.
    let started = Instant::now();
    c.submit(&[cluster::units::with_state(
        c.service("a-late.service", &[]),
        api::TargetState::Inactive,
    )])
    .await?;
    b.execute("document.querySelector('#pager button').click();", vec![])
        .await?;
    wait_for(
        "a-late.service on screen among 10,000",
        DEFAULT_DEADLINE,
        || async {
            let rows = unit_rows(b).await.map_err(|e| format!("{e:#}"))?;
            if rows.contains_key("a-late.service") {
                Ok(())
            } else {
                Err(format!("{} rows", rows.len()))
            }
        },
    )
    .await?;
    println!(
        "FIGURE dashboard: at {N} units, a unit submitted appears on screen {} ms later",
        started.elapsed().as_millis()
    );
    Ok(())
}
