//! Cost of building Maglev lookup tables (on the control thread).
//!
//! Cases:
//! - `maglev/build/65537_entries/{100,1000}_backends`: one table of the
//!   paper's size M = 65,537 (the paper reports 1.8 ms for its build);
//! - `maglev/build/16381_entries/10_backends`: one table of the default
//!   size for a typical Service;
//! - `maglev/compile/10000_services_10_endpoints/random`: compiling a
//!   table of 10,000 Services of 10 endpoints each (every Service its own
//!   endpoint set), all under random choice: the baseline;
//! - `.../maglev_rebuild_{16381,1021}`: the same model under Maglev,
//!   compiled with the store of tables the previous compilation left
//!   (what the daemon does on every change: only new endpoint sets are
//!   built; here none), at table sizes 16,381 (328 MB of tables) and
//!   1,021 (20 MB);
//! - `.../maglev_one_changed`: the same, one Service's endpoints changed
//!   each time (one table built);
//! - `.../maglev_cold_{1021,16381}`: the same with an empty store (a
//!   gateway's first table), at table sizes 1,021 and 16,381: 10,000
//!   tables built.
//!
//! Run: `cargo bench -p cipgw-datapath --bench maglev`.

use std::hint::black_box;
use std::time::Duration;

use cipgw_config::LbAlgorithm;
use cipgw_datapath::maglev::{test_backend, MaglevTable, MaglevTables};
use criterion::{criterion_group, criterion_main, Criterion};

#[path = "support/services.rs"]
mod services;

use services::{compile, model};

fn bench(c: &mut Criterion) {
    let mut group = c.benchmark_group("maglev");
    group.measurement_time(Duration::from_secs(5));
    for (m, n) in [(65_537u32, 100u32), (65_537, 1000), (16_381, 10)] {
        let backends: Vec<_> = (0..n).map(|i| test_backend(i, 8080)).collect();
        group.bench_function(format!("build/{m}_entries/{n}_backends"), |b| {
            b.iter(|| black_box(MaglevTable::build(&backends, m, 7).expect("builds")))
        });
    }

    group.sample_size(10);
    let random = model(None, usize::MAX, 0);
    let maglev = model(Some(LbAlgorithm::Maglev), usize::MAX, 0);
    let name = "compile/10000_services_10_endpoints";
    group.bench_function(format!("{name}/random"), |b| {
        let mut tables = MaglevTables::new(16_381, 7);
        b.iter(|| black_box(compile(&random, &mut tables)))
    });
    for m in [16_381u32, 1021] {
        group.bench_function(format!("{name}/maglev_rebuild_{m}"), |b| {
            let mut tables = MaglevTables::new(m, 7);
            compile(&maglev, &mut tables);
            b.iter(|| black_box(compile(&maglev, &mut tables)))
        });
    }
    let versions = [
        model(Some(LbAlgorithm::Maglev), 4321, 1),
        model(Some(LbAlgorithm::Maglev), 4321, 2),
    ];
    group.bench_function(format!("{name}/maglev_one_changed"), |b| {
        let mut tables = MaglevTables::new(16_381, 7);
        compile(&versions[0], &mut tables);
        let mut i = 1;
        b.iter(|| {
            i ^= 1;
            black_box(compile(&versions[i], &mut tables))
        })
    });
    for m in [1021u32, 16_381] {
        group.bench_function(format!("{name}/maglev_cold_{m}"), |b| {
            b.iter(|| {
                let mut tables = MaglevTables::new(m, 7);
                black_box(compile(&maglev, &mut tables))
            })
        });
    }
    group.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
