//! The backend-choice flags `cipgw run` and `cipgw check` share:
//! `--lb`, `--maglev-table-size`, `--hash-seed`.

use cipgw_config::settings::{parse_hash_seed, LbSettings};
use cipgw_config::LbAlgorithm;

use super::BadInput;

#[derive(Debug, Default, Clone, clap::Args)]
pub struct LbArgs {
    /// How new connections pick an endpoint, for Services without the
    /// `cipgw.io/lb-algorithm` annotation: `random` (what kube-proxy does)
    /// or `maglev` (consistent hashing of the 5-tuple: gateways behind one
    /// ECMP route that share --hash-seed pick the same endpoint for every
    /// flow, carry on flows another gateway started, and rewrite their
    /// replies) [default: random].
    #[arg(long, value_name = "random|maglev")]
    pub lb: Option<LbAlgorithm>,
    /// Entries of each Maglev lookup table, a prime (1021, 16381, 65537):
    /// at least 100 per endpoint for even shares; each distinct endpoint
    /// set costs 2 bytes an entry [default: 16381].
    #[arg(long, value_name = "PRIME")]
    pub maglev_table_size: Option<u32>,
    /// Seed of Maglev's hashing of endpoints and 5-tuples, decimal or
    /// 0x-hex: the same on every gateway of one ECMP group (share it
    /// through the settings ConfigMap); keep it secret to keep clients
    /// from aiming flows at one Pod [default: 0].
    #[arg(long, value_name = "N", value_parser = parse_hash_seed)]
    pub hash_seed: Option<u64>,
}

impl LbArgs {
    /// Flags (from the command line or the settings file) over defaults.
    pub fn resolve(self) -> Result<LbSettings, BadInput> {
        let defaults = LbSettings::default();
        let lb = LbSettings {
            algorithm: self.lb.unwrap_or(defaults.algorithm),
            maglev_table_size: self.maglev_table_size.unwrap_or(defaults.maglev_table_size),
            hash_seed: self.hash_seed.unwrap_or(defaults.hash_seed),
        };
        lb.validate().map_err(|e| BadInput(e.to_string()))?;
        Ok(lb)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flags_resolve_over_defaults_and_sizes_must_be_prime() {
        let flags = LbArgs {
            lb: Some(LbAlgorithm::Maglev),
            maglev_table_size: Some(1021),
            hash_seed: None,
        };
        let lb = flags.resolve().expect("valid");
        assert_eq!(
            (lb.algorithm, lb.maglev_table_size, lb.hash_seed),
            (LbAlgorithm::Maglev, 1021, 0)
        );
        let bad = LbArgs {
            maglev_table_size: Some(16_384),
            ..LbArgs::default()
        };
        let err = bad.resolve().expect_err("16384 is not prime");
        assert!(err.0.contains("--maglev-table-size: 16384"), "{}", err.0);
    }
}
