//! Property test: whatever `GgufWriter` writes, `GgufFile` reads back unchanged: every
//! metadata value with its integer width, every tensor's name, shape, type and bytes, and the
//! values `tensor_f32` decodes equal `dequantize` of the bytes written (for F32, the values
//! themselves).

use echo_model::gguf::dequant::{dequantize, quantize};
use echo_model::gguf::{GgmlType, GgufFile, GgufWriter, Value};
use proptest::prelude::*;

const TYPES: [GgmlType; 7] =
    [GgmlType::F32, GgmlType::F16, GgmlType::BF16, GgmlType::Q4_0, GgmlType::Q4_1, GgmlType::Q5_0, GgmlType::Q8_0];

fn value() -> impl Strategy<Value = Value> {
    prop_oneof![
        any::<u8>().prop_map(Value::U8),
        any::<i16>().prop_map(Value::I16),
        any::<u32>().prop_map(Value::U32),
        any::<i64>().prop_map(Value::I64),
        any::<bool>().prop_map(Value::Bool),
        (-1e30f32..1e30).prop_map(Value::F32),
        (-1e300f64..1e300).prop_map(Value::F64),
        "[a-zA-Z0-9 _.<>|-]{0,24}".prop_map(Value::String),
        prop::collection::vec(any::<i32>().prop_map(Value::I32), 0..6).prop_map(|v| Value::Array(5, v)),
        prop::collection::vec("[a-z]{0,8}".prop_map(Value::String), 0..6).prop_map(|v| Value::Array(8, v)),
    ]
}

/// (name, PyTorch shape, type, values): the innermost dimension a whole number of blocks.
fn tensor() -> impl Strategy<Value = (usize, Vec<usize>, f32)> {
    (0..TYPES.len(), 1usize..4, 1usize..3, 0.01f32..100.0)
        .prop_map(|(ty, rows, blocks, scale)| (ty, vec![rows, blocks * TYPES[ty].block().0], scale))
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 48, ..ProptestConfig::default() })]
    #[test]
    fn what_the_writer_writes_the_reader_reads(
        kvs in prop::collection::btree_map("[a-z]{1,6}(\\.[a-z]{1,6}){0,2}", value(), 0..8),
        tensors in prop::collection::vec(tensor(), 0..4),
        seed in any::<u64>(),
        alignment in prop::sample::select(vec![8u64, 32, 64]),
    ) {
        let mut w = GgufWriter::new();
        w.alignment = alignment;
        if alignment != 32 {
            w.u32("general.alignment", alignment as u32);
        }
        for (k, v) in &kvs {
            w.kv(&format!("test.{k}"), v.clone());
        }
        let mut x = seed | 1;
        let mut expect = Vec::new();
        for (i, (ty, shape, scale)) in tensors.iter().enumerate() {
            let n: usize = shape.iter().product();
            let data: Vec<f32> = (0..n)
                .map(|_| {
                    x ^= x << 13;
                    x ^= x >> 7;
                    x ^= x << 17;
                    ((x >> 40) as f32 / (1u64 << 24) as f32 - 0.5) * scale
                })
                .collect();
            let name = format!("blk.{i}.weight");
            w.tensor(&name, shape, &data, TYPES[*ty]);
            expect.push((name, shape.clone(), TYPES[*ty], quantize(TYPES[*ty], &data), data));
        }
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("t.gguf");
        w.write(&path).unwrap();
        let f = GgufFile::open(&path).unwrap();
        for (k, v) in &kvs {
            prop_assert_eq!(f.get(&format!("test.{k}")), Some(v), "key {}", k);
        }
        prop_assert_eq!(f.tensors.len(), expect.len());
        for (name, shape, ty, bytes, data) in &expect {
            let t = f.tensor(name).expect("tensor present");
            prop_assert_eq!(&t.torch_shape(), shape);
            prop_assert_eq!(t.ggml_type, *ty);
            prop_assert_eq!(t.offset % alignment, 0, "{} aligned", name);
            prop_assert_eq!(f.tensor_bytes(t), &bytes[..]);
            let decoded = f.tensor_f32(t).unwrap();
            prop_assert_eq!(&decoded, &dequantize(*ty, bytes, data.len()).unwrap());
            if *ty == GgmlType::F32 {
                prop_assert_eq!(&decoded, data);
            }
        }
    }
}
