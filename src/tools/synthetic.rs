//! Synthetic galleries for the bench: random descriptors from a seed, kept
//! here as well as imported, so that every answer can be checked exactly.

use std::str::FromStr;
use std::sync::Arc;

use luna_core::descriptor::{Dtype, VersionSpec, DEFAULT_FLOAT_VERSION};
use luna_core::index::Vectors;

use super::input::{Face, InputInfo, Item, Row, Source};

/// The version synthetic descriptors are sent as: explicit, whatever the service's default.
pub fn version_of(dtype: Dtype) -> u32 {
    match dtype {
        Dtype::U8 => 62,
        Dtype::F32 => DEFAULT_FLOAT_VERSION,
    }
}

pub fn spec_of(dtype: Dtype) -> VersionSpec {
    VersionSpec { length: 512, dtype, a: None, b: None }
}

pub fn dtype_name(dtype: Dtype) -> &'static str {
    match dtype {
        Dtype::U8 => "u8",
        Dtype::F32 => "f32",
    }
}

/// A synthetic list: `u8:100k`, `f32:10000`, `u8:1M`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ListSpec {
    pub dtype: Dtype,
    pub size: u64,
}

impl ListSpec {
    pub fn label(&self) -> String {
        format!("{}:{}", dtype_name(self.dtype), self.size)
    }
}

impl FromStr for ListSpec {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        let (dtype, size) = s.split_once(':').ok_or_else(|| format!("'{s}': DTYPE:SIZE, as u8:100k"))?;
        let dtype = match dtype {
            "u8" => Dtype::U8,
            "f32" => Dtype::F32,
            _ => return Err(format!("'{dtype}': u8 or f32")),
        };
        let (digits, scale) = match size.as_bytes().last() {
            Some(b'k' | b'K') => (&size[..size.len() - 1], 1_000),
            Some(b'm' | b'M') => (&size[..size.len() - 1], 1_000_000),
            _ => (size, 1),
        };
        let size = digits.parse::<u64>().map_err(|_| format!("'{size}': a number, with k or M"))? * scale;
        if size == 0 {
            return Err("a list needs at least one face".into());
        }
        Ok(ListSpec { dtype, size })
    }
}

/// SplitMix64: the same numbers from a seed on every machine and in every
/// version, so a rerun regenerates exactly the lists it imported before.
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Rng {
        Rng(seed)
    }

    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform in 0..n.
    pub fn below(&mut self, n: usize) -> usize {
        (((self.next_u64() >> 32) * n as u64) >> 32) as usize
    }

    /// Uniform in [-1, 1).
    fn signed_unit(&mut self) -> f32 {
        (self.next_u64() >> 40) as f32 / (1u64 << 23) as f32 - 1.0
    }
}

/// Random descriptors of one dtype.
pub fn random(dtype: Dtype, rng: &mut Rng) -> Vec<u8> {
    match dtype {
        Dtype::U8 => (0..512 / 8).flat_map(|_| rng.next_u64().to_le_bytes()).collect(),
        Dtype::F32 => (0..512).flat_map(|_| rng.signed_unit().to_le_bytes()).collect(),
    }
}

/// A descriptor close to `payload` (similarity about 0.9): a probe of a known face.
pub fn near(dtype: Dtype, payload: &[u8], rng: &mut Rng) -> Vec<u8> {
    match dtype {
        Dtype::U8 => payload.iter().map(|&q| (q as i16 + (rng.signed_unit() * 24.0) as i16).clamp(0, 255) as u8).collect(),
        Dtype::F32 => {
            payload.chunks_exact(4).flat_map(|c| (f32::from_le_bytes(c.try_into().expect("4 bytes")) + rng.signed_unit() * 0.25).to_le_bytes()).collect()
        }
    }
}

pub struct Gallery {
    pub spec: ListSpec,
    pub vectors: Vectors,
}

impl Gallery {
    pub fn generate(spec: ListSpec, seed: u64) -> Gallery {
        let mut rng = Rng::new(seed ^ spec.size.rotate_left(17) ^ spec.dtype as u64);
        let mut vectors = Vectors::new(spec_of(spec.dtype));
        for _ in 0..spec.size {
            vectors.push(&random(spec.dtype, &mut rng));
        }
        Gallery { spec, vectors }
    }
}

/// A gallery as the importer's source.
pub struct Synthetic {
    gallery: Arc<Gallery>,
    inputs: Vec<InputInfo>,
}

impl Synthetic {
    pub fn new(gallery: Arc<Gallery>, seed: u64) -> Synthetic {
        let inputs = vec![InputInfo { name: format!("synthetic {} seed {seed}", gallery.spec.label()), rows: gallery.spec.size, descriptor_version: None }];
        Synthetic { gallery, inputs }
    }
}

impl Source for Synthetic {
    fn inputs(&self) -> &[InputInfo] {
        &self.inputs
    }

    fn read(&mut self, skip: &dyn Fn(u64) -> bool, emit: &mut dyn FnMut(Item) -> bool) -> Result<(), String> {
        let version = version_of(self.gallery.spec.dtype);
        for index in (0..self.gallery.spec.size).filter(|i| !skip(*i)) {
            let data = self.gallery.vectors.payload(index as usize).to_vec();
            let face = Face { data, version: Some(version), account_id: None, external_id: None, user_data: String::new(), lists: Vec::new() };
            if !emit(Item::Row(Row { index, file: 0, row: index + 1, face })) {
                break;
            }
        }
        Ok(())
    }
}
