//! Retries at fleet scale: does the layer prevent retry storms, and which
//! jitter should a client use?
//!
//! ```text
//! cargo bench --bench storm                  # full run (a few minutes)
//! BENCH_QUICK=1 cargo bench --bench storm    # under a minute
//! ```
//!
//! Three studies, each ending with `RESULT` lines:
//!
//! 1. **Fleet** (`fleet.rs`, `model.rs`): 1,000 clients, each with its own
//!    `RetryLayer` (own throttle bucket, budget, breaker, as separate
//!    processes would have), call a server model of 100 workers and a FIFO
//!    queue at 70 % of its capacity for a simulated minute; from 10 s to
//!    15 s the capacity halves. Virtual time (`tokio::time::pause()`): the
//!    layer's own decision code runs unchanged on tokio's clock. Five
//!    modes, same seed: none, naive, throttling, budget, breaker. Writes
//!    the chart `benches/storm.svg` (quick mode: under the target dir).
//! 2. **Validation** (`fleet::real`): the same scenario at 1/50 the size
//!    (20 clients, 2 workers) against the real test server with the same
//!    capacity model over loopback sockets, in real time, next to the
//!    simulator's runs of that small scenario.
//! 3. **Jitter on contention** (`occ.rs`): AWS's "Exponential Backoff And
//!    Jitter" race for one row, 10 to 50 clients, six backoffs, the layer
//!    doing the backoff.

#[path = "../common/mod.rs"]
mod common;

mod chart;
mod fleet;
mod model;
mod occ;

use std::time::{Duration, Instant};

use fleet::{Mode, Run};
use model::{Scenario, Summary};

fn main() {
    let quick = common::quick();
    println!("storm: {}", common::describe_machine());
    if quick {
        println!("QUICK mode: shorter runs, fewer seeds and races");
    }
    // `STORM_ONLY=fleet|validation|jitter` runs one study (for debugging).
    let only = std::env::var("STORM_ONLY").unwrap_or_default();
    let run = |study: &str| only.is_empty() || only == study;
    if run("fleet") {
        fleet_study(quick);
    }
    let agree = !run("validation") || validation(quick);
    if run("jitter") {
        jitter_study(quick);
    }
    if !agree {
        println!("\nNOTE: the simulator and the real run disagree; see the validation table.");
    }
}

fn recovery_text(s: &Summary) -> String {
    match s.recovery {
        Some(d) => format!("{:.2} s", d.as_secs_f64()),
        None => "did not recover".to_owned(),
    }
}

fn recovery_value(s: &Summary) -> f64 {
    s.recovery.map_or(-1.0, |d| d.as_secs_f64())
}

/// Study 1: the fleet in virtual time.
fn fleet_study(quick: bool) {
    // A simulated minute takes a second or two of wall time: quick mode
    // runs the whole study too.
    let _ = quick;
    // `STORM_SCALE=n`: 20 × n clients (default 50: 1,000 clients).
    let scale = std::env::var("STORM_SCALE")
        .ok()
        .and_then(|v| v.parse().ok())
        .filter(|&n: &usize| n > 0)
        .unwrap_or(50);
    let scenario = Scenario::at_scale(scale);
    println!(
        "\n== Fleet: {} clients, {} workers ({:.0} calls/s), queue {}, load {:.0} %, \
         attempt timeout {:?}, deadline {:?}; capacity {} workers from {:?} to {:?}; {:?} simulated",
        scenario.clients,
        scenario.workers,
        scenario.capacity(),
        scenario.queue_limit,
        scenario.load * 100.0,
        scenario.attempt_timeout,
        scenario.deadline,
        scenario.trigger_workers,
        scenario.trigger_start,
        scenario.trigger_end(),
        scenario.duration,
    );
    let wall = Instant::now();
    let mut runs = Vec::new();
    for mode in Mode::ALL.into_iter().chain(Mode::EXTRA) {
        let started = Instant::now();
        let run = fleet::simulate(&scenario, mode);
        println!(
            "  {:<10} simulated in {:.1} s of wall time (measured service time {:.2} ms)",
            mode.name(),
            started.elapsed().as_secs_f64(),
            run.measured_service.as_secs_f64() * 1e3
        );
        runs.push(run);
    }
    let wall_s = wall.elapsed().as_secs_f64();
    println!(
        "  all {} runs: {wall_s:.1} s of wall time for {} simulated seconds each",
        runs.len(),
        scenario.duration.as_secs()
    );

    println!();
    println!(
        "{:<14} {:>10} {:>10} {:>10} {:>10} {:>10} {:>9} {:>16}",
        "mode", "baseline", "peak amp", "mean amp", "amp after", "goodput", "max queue", "recovery"
    );
    let summaries: Vec<Summary> = runs
        .iter()
        .map(|run| model::summarize(&scenario, &run.calls))
        .collect();
    for (run, s) in runs.iter().zip(&summaries) {
        let max_queue = run.server.iter().map(|b| b.max_queue).max().unwrap_or(0);
        println!(
            "{:<14} {:>10.3} {:>10.2} {:>10.2} {:>10.2} {:>10.3} {:>9} {:>16}",
            run.mode.name(),
            s.baseline_success,
            s.peak_amplification,
            s.mean_amplification,
            s.after_amplification,
            s.goodput,
            max_queue,
            recovery_text(s)
        );
    }
    println!(
        "(amp = attempts ÷ offered calls; peak over {:?} buckets and mean over the trigger; \
              after = from the trigger's end to the last arrival; goodput = share of the calls \
              offered during the trigger that succeeded; recovery = from the trigger's end until \
              the calls succeed >= 95 % for 3 s on end)",
        scenario.bucket
    );
    for mode in Mode::ALL.into_iter().chain(Mode::EXTRA) {
        println!("  {:<14} {}", mode.name(), mode.describe());
    }

    let chart = if quick {
        std::path::PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("storm-quick.svg")
    } else {
        std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("benches/storm.svg")
    };
    let caption = format!(
        "{} clients, capacity halved from {} s to {} s{}",
        scenario.clients,
        scenario.trigger_start.as_secs(),
        scenario.trigger_end().as_secs(),
        if quick { " (QUICK)" } else { "" }
    );
    match chart::draw(&chart, &scenario, &runs, &caption) {
        Ok(()) => println!("chart: {}", chart.display()),
        Err(e) => eprintln!("could not write {}: {e}", chart.display()),
    }

    dropping_server(&scenario);
    jitter_in_an_outage(&scenario);

    println!();
    common::result("storm_clients", scenario.clients as f64);
    common::result("storm_wall_s", wall_s);
    for (run, s) in runs.iter().zip(&summaries) {
        let name = run.mode.name();
        common::result(&format!("storm_amplification_{name}"), s.mean_amplification);
        common::result(
            &format!("storm_peak_amplification_{name}"),
            s.peak_amplification,
        );
        common::result(&format!("storm_goodput_{name}"), s.goodput);
        common::result(&format!("storm_recovery_s_{name}"), recovery_value(s));
    }
}

/// The fleet again, against a server that drops the work of callers that
/// have gone (`finish_abandoned: false`): how much of the storm is the
/// server's wasted work.
fn dropping_server(fleet: &Scenario) {
    let mut scenario = fleet.clone();
    scenario.finish_abandoned = false;
    println!("\nThe same fleet against a server that drops the work of callers that have gone:");
    println!(
        "{:<14} {:>10} {:>10} {:>10} {:>16}",
        "mode", "mean amp", "amp after", "goodput", "recovery"
    );
    for mode in Mode::ALL {
        let run = fleet::simulate(&scenario, mode);
        let s = model::summarize(&scenario, &run.calls);
        println!(
            "{:<14} {:>10.2} {:>10.2} {:>10.3} {:>16}",
            mode.name(),
            s.mean_amplification,
            s.after_amplification,
            s.goodput,
            recovery_text(&s)
        );
        let name = mode.name();
        common::result(
            &format!("storm_dropping_amplification_{name}"),
            s.mean_amplification,
        );
        common::result(&format!("storm_dropping_goodput_{name}"), s.goodput);
        common::result(
            &format!("storm_dropping_recovery_s_{name}"),
            recovery_value(&s),
        );
    }
}

/// The fleet with each jitter kind, without protection and with
/// throttling: does the jitter decide an outage's outcome?
fn jitter_in_an_outage(fleet: &Scenario) {
    use tonic_retry::Jitter;
    println!("\nThe same fleet with each jitter (backoff 100 ms doubling to 1 s):");
    println!(
        "{:<14} {:<13} {:>10} {:>10} {:>10} {:>16}",
        "mode", "jitter", "mean amp", "amp after", "goodput", "recovery"
    );
    let kinds = [
        ("a6", Jitter::Proportional),
        ("equal", Jitter::Equal),
        ("full", Jitter::Full),
        ("decorrelated", Jitter::Decorrelated),
    ];
    for mode in [Mode::Naive, Mode::Throttling] {
        for (name, jitter) in kinds {
            let run = fleet::simulate_with(fleet, mode, jitter);
            let s = model::summarize(fleet, &run.calls);
            println!(
                "{:<14} {:<13} {:>10.2} {:>10.2} {:>10.3} {:>16}",
                mode.name(),
                name,
                s.mean_amplification,
                s.after_amplification,
                s.goodput,
                recovery_text(&s)
            );
            let m = mode.name();
            common::result(
                &format!("storm_jitter_amplification_{m}_{name}"),
                s.mean_amplification,
            );
            common::result(
                &format!("storm_jitter_recovery_s_{m}_{name}"),
                recovery_value(&s),
            );
        }
    }
}

/// The small scenario, in real time and in the simulator.
fn small_scenario(quick: bool) -> Scenario {
    let mut s = Scenario::at_scale(1);
    // 35 calls a second: buckets of a second hold enough calls for a
    // success ratio (one failure in 35 is 97 %).
    s.bucket = Duration::from_secs(1);
    if quick {
        // A shorter dip, but a 5 s aftermath: recovery must hold for 3 s.
        s.trigger_start = Duration::from_secs(1);
        s.trigger_len = Duration::from_secs(2);
        s.duration = Duration::from_secs(8);
    } else {
        s.trigger_start = Duration::from_secs(2);
        s.trigger_len = Duration::from_secs(5);
        s.duration = Duration::from_secs(15);
    }
    s
}

/// Study 2: the small scenario on real sockets against the simulator.
/// Returns whether they agree.
///
/// Each real run has a simulated twin with the same seed: the same
/// arrivals (times and clients) and the same service-time stream. The
/// figures compared are means over the real seeds and their twins; the
/// simulator's spread over more seeds is shown beside them, because at 20
/// clients and two workers one run's goodput depends a lot on its draws.
fn validation(quick: bool) -> bool {
    let scenario = small_scenario(quick);
    let real_seeds: u64 = if quick { 1 } else { 3 };
    let sim_seeds: u64 = if quick { 4 } else { 20 };
    println!(
        "\n== Validation: {} clients, {} workers ({:.0} calls/s), queue {}; capacity {} worker \
         from {:?} to {:?}; {:?} per run. Real: the test server's capacity model over loopback \
         sockets, real time, all modes at once (one server each), seeds 1..={real_seeds}; \
         simulated: the same seeds, and seeds 1..={sim_seeds} for the spread",
        scenario.clients,
        scenario.workers,
        scenario.capacity(),
        scenario.queue_limit,
        scenario.trigger_workers,
        scenario.trigger_start,
        scenario.trigger_end(),
        scenario.duration,
    );
    let with_seed = |seed: u64| {
        let mut s = scenario.clone();
        s.seed = seed;
        s
    };
    let wall = Instant::now();
    // real[seed][mode]
    let real: Vec<Vec<Run>> = (1..=real_seeds)
        .map(|seed| fleet::real(&with_seed(seed), &Mode::ALL))
        .collect();
    println!(
        "  real runs: {:.1} s of wall time",
        wall.elapsed().as_secs_f64()
    );
    let mut agree = true;
    println!();
    println!(
        "{:<11} {:>9} {:>9} {:>6} {:>18} {:>8} {:>8} {:>11} {:>11} {:>12} {:>6}",
        "mode",
        "real amp",
        "twin amp",
        "diff",
        "sim amp (range)",
        "real gp",
        "twin gp",
        "real recov",
        "twin recov",
        "sim recov",
        "agree"
    );
    let mean = |v: &[f64]| v.iter().sum::<f64>() / v.len().max(1) as f64;
    for (m, mode) in Mode::ALL.iter().enumerate() {
        let real_s: Vec<Summary> = real
            .iter()
            .enumerate()
            .map(|(i, runs)| model::summarize(&with_seed(i as u64 + 1), &runs[m].calls))
            .collect();
        let sims: Vec<Summary> = (1..=sim_seeds)
            .map(|seed| {
                let s = with_seed(seed);
                model::summarize(&s, &fleet::simulate(&s, *mode).calls)
            })
            .collect();
        let twins = &sims[..real_s.len().min(sims.len())];
        let amp = |v: &[Summary]| mean(&v.iter().map(|s| s.mean_amplification).collect::<Vec<_>>());
        let gp = |v: &[Summary]| mean(&v.iter().map(|s| s.goodput).collect::<Vec<_>>());
        let recovered = |v: &[Summary]| v.iter().filter(|s| s.recovery.is_some()).count();
        let recovery = |v: &[Summary]| {
            let times: Vec<f64> = v
                .iter()
                .filter_map(|s| s.recovery)
                .map(|d| d.as_secs_f64())
                .collect();
            if times.is_empty() {
                format!("0/{}", v.len())
            } else {
                format!("{}/{} {:.1}s", times.len(), v.len(), mean(&times))
            }
        };
        let (real_amp, twin_amp) = (amp(&real_s), amp(twins));
        let diff = (real_amp - twin_amp) / twin_amp;
        let lo = sims
            .iter()
            .map(|s| s.mean_amplification)
            .fold(f64::MAX, f64::min);
        let hi = sims
            .iter()
            .map(|s| s.mean_amplification)
            .fold(0.0, f64::max);
        // The shape agrees when the real amplification is within 20 % of
        // the twins' and the same runs recover.
        let same = diff.abs() <= 0.2 && recovered(&real_s) == recovered(twins);
        agree &= same;
        println!(
            "{:<11} {:>9.2} {:>9.2} {:>+5.0}% {:>5.2} ({:.2}-{:.2}) {:>8.3} {:>8.3} {:>11} {:>11} {:>12} {:>6}",
            mode.name(),
            real_amp,
            twin_amp,
            diff * 100.0,
            amp(&sims),
            lo,
            hi,
            gp(&real_s),
            gp(twins),
            recovery(&real_s),
            recovery(twins),
            recovery(&sims),
            if same { "yes" } else { "NO" }
        );
        let name = mode.name();
        let service: Vec<f64> = real
            .iter()
            .map(|runs| runs[m].measured_service.as_secs_f64() * 1e3)
            .collect();
        common::result(&format!("storm_real_amplification_{name}"), real_amp);
        common::result(&format!("storm_twin_amplification_{name}"), twin_amp);
        common::result(&format!("storm_real_goodput_{name}"), gp(&real_s));
        common::result(&format!("storm_twin_goodput_{name}"), gp(twins));
        common::result(
            &format!("storm_real_recovered_{name}"),
            recovered(&real_s) as f64 / real_s.len().max(1) as f64,
        );
        common::result(
            &format!("storm_twin_recovered_{name}"),
            recovered(twins) as f64 / twins.len().max(1) as f64,
        );
        common::result(&format!("storm_real_service_ms_{name}"), mean(&service));
        if std::env::var_os("STORM_TRACE").is_some() {
            for (i, runs) in real.iter().enumerate() {
                let seed = i as u64 + 1;
                trace(
                    &format!("real {name} seed {seed}"),
                    &runs[m].calls,
                    &runs[m].server,
                );
                let twin = fleet::simulate(&with_seed(seed), *mode);
                trace(
                    &format!("twin {name} seed {seed}"),
                    &twin.calls,
                    &twin.server,
                );
            }
        }
    }
    let service: Vec<f64> = real
        .iter()
        .flatten()
        .map(|run| run.measured_service.as_secs_f64() * 1e3)
        .collect();
    let late: Vec<f64> = real
        .iter()
        .flatten()
        .map(|run| run.late.as_secs_f64() * 1e3)
        .collect();
    println!(
        "(amp, gp: over the trigger; twin: the simulator with the real runs' seeds; recov: runs \
         that recovered, mean time after the trigger. The real servers' mean service time: \
         {:.2} ms (the model's {:.2} ms); their workers woke {:.2} ms late on average, which \
         delays answers but, kept to schedule, costs no capacity)",
        mean(&service),
        scenario.mean_service.as_secs_f64() * 1e3,
        mean(&late)
    );
    common::result("storm_real_late_ms", mean(&late));
    common::result("storm_validation_agree", f64::from(u8::from(agree)));
    agree
}

/// Prints a run bucket by bucket (`STORM_TRACE=1`).
fn trace(title: &str, calls: &[model::CallBucket], server: &[model::ServerBucket]) {
    println!("  {title}: bucket offered attempts ok failed max_queue");
    for (i, c) in calls.iter().enumerate() {
        let q = server.get(i).map_or(0, |b| b.max_queue);
        println!(
            "    {i:>3} {:>6} {:>6} {:>6} {:>6} {:>6}",
            c.offered, c.attempts, c.succeeded, c.failed, q
        );
    }
}

/// Study 3: AWS's optimistic-concurrency race under each backoff.
fn jitter_study(quick: bool) {
    let runs: u64 = if quick { 10 } else { 100 };
    let clients = [10usize, 20, 30, 40, 50];
    println!(
        "\n== Jitter on contention: AWS's race for one row, {runs} runs per cell; each message \
         |N(10 ms, 2 ms)|; retry n waits min(2 s, 5 ms x 2^n) under the jitter (decorrelated: \
         min(2 s, U(5 ms, 3 x previous)))"
    );
    let wall = Instant::now();
    let mut table = Vec::new();
    for kind in occ::Kind::ALL {
        let row: Vec<occ::Mean> = clients
            .iter()
            .map(|&n| occ::mean_of_runs(kind, n, runs))
            .collect();
        table.push((kind, row));
    }
    println!("  {:.1} s of wall time", wall.elapsed().as_secs_f64());
    for (title, pick) in [
        ("mean completion time, ms", 0usize),
        ("mean server calls (conditional writes)", 1),
    ] {
        println!("\n{title}");
        print!("{:<13}", "clients");
        for n in clients {
            print!(" {n:>9}");
        }
        println!();
        for (kind, row) in &table {
            print!("{:<13}", kind.name());
            for m in row {
                let v = if pick == 0 { m.completion_ms } else { m.calls };
                print!(" {v:>9.1}");
            }
            println!();
        }
    }
    let failed: usize = table
        .iter()
        .flat_map(|(_, row)| row.iter().map(|m| m.failed))
        .sum();
    if failed > 0 {
        println!("WARNING: {failed} clients did not write");
    }
    println!();
    for (kind, row) in &table {
        for (n, m) in clients.iter().zip(row) {
            common::result(&format!("occ_ms_{}_{n}", kind.name()), m.completion_ms);
            common::result(&format!("occ_calls_{}_{n}", kind.name()), m.calls);
        }
    }
}
