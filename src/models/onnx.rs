//! Just enough of the ONNX protobuf format to check a model file without ONNX Runtime: the
//! graph's inputs and outputs, and its first node names (insightface's normalisation rule).
//! Field numbers are from onnx.proto: ModelProto.graph = 7; GraphProto.node = 1, input = 11,
//! output = 12; NodeProto.name = 3; ValueInfoProto.name = 1, type = 2; TypeProto.tensor_type = 1;
//! Tensor.shape = 2; TensorShapeProto.dim = 1; Dimension.dim_value = 1 (varint).

/// One graph input or output: its name and its dimensions (None where symbolic).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ValueInfo {
    pub name: String,
    pub dims: Vec<Option<u64>>,
}

/// The inputs and outputs of a model's graph. Reading a truncated file fails.
pub fn graph_signature(model: &[u8]) -> Result<(Vec<ValueInfo>, Vec<ValueInfo>), &'static str> {
    let graph = graph(model)?;
    let (mut inputs, mut outputs) = (Vec::new(), Vec::new());
    for field in protobuf_fields(graph)? {
        match field {
            Field::Bytes(11, value) => inputs.push(value_info(value)?),
            Field::Bytes(12, value) => outputs.push(value_info(value)?),
            _ => {}
        }
    }
    Ok((inputs, outputs))
}

fn graph(model: &[u8]) -> Result<&[u8], &'static str> {
    protobuf_fields(model)?
        .into_iter()
        .find_map(|field| match field {
            Field::Bytes(7, graph) => Some(graph),
            _ => None,
        })
        .ok_or("no graph")
}

fn value_info(bytes: &[u8]) -> Result<ValueInfo, &'static str> {
    let fields = protobuf_fields(bytes)?;
    let name = bytes_field(&fields, 1).map(|b| String::from_utf8_lossy(b).into_owned()).unwrap_or_default();
    let mut dims = Vec::new();
    let tensor_type = bytes_field(&fields, 2).map(protobuf_fields).transpose()?;
    let tensor = tensor_type.as_deref().and_then(|f| bytes_field(f, 1)).map(protobuf_fields).transpose()?;
    let shape = tensor.as_deref().and_then(|f| bytes_field(f, 2)).map(protobuf_fields).transpose()?;
    for field in shape.unwrap_or_default() {
        if let Field::Bytes(1, dim) = field {
            let value = protobuf_fields(dim)?.into_iter().find_map(|f| match f {
                Field::Varint(1, v) => Some(v),
                _ => None,
            });
            dims.push(value);
        }
    }
    Ok(ValueInfo { name, dims })
}

fn bytes_field<'a>(fields: &[Field<'a>], number: u64) -> Option<&'a [u8]> {
    fields.iter().find_map(|field| match field {
        Field::Bytes(n, value) if *n == number => Some(*value),
        _ => None,
    })
}

/// The names of the first `limit` nodes of an ONNX model's graph.
pub fn first_node_names(model: &[u8], limit: usize) -> Result<Vec<String>, &'static str> {
    let mut names = Vec::new();
    for field in protobuf_fields(graph(model)?)? {
        if names.len() == limit {
            break;
        }
        if let Field::Bytes(1, node) = field {
            let name = bytes_field(&protobuf_fields(node)?, 3).unwrap_or_default();
            names.push(String::from_utf8_lossy(name).into_owned());
        }
    }
    Ok(names)
}

/// A field of a protobuf message: varints and length-delimited values; fixed-width ones are
/// skipped.
enum Field<'a> {
    Varint(u64, u64),
    Bytes(u64, &'a [u8]),
}

/// The fields of one protobuf message, in order.
fn protobuf_fields(mut bytes: &[u8]) -> Result<Vec<Field<'_>>, &'static str> {
    fn varint(bytes: &mut &[u8]) -> Result<u64, &'static str> {
        let mut value = 0u64;
        for shift in (0..64).step_by(7) {
            let (&byte, rest) = bytes.split_first().ok_or("truncated")?;
            *bytes = rest;
            value |= u64::from(byte & 0x7f) << shift;
            if byte & 0x80 == 0 {
                return Ok(value);
            }
        }
        Err("bad varint")
    }
    let mut fields = Vec::new();
    while !bytes.is_empty() {
        let key = varint(&mut bytes)?;
        let skip = match key & 7 {
            0 => {
                fields.push(Field::Varint(key >> 3, varint(&mut bytes)?));
                0
            }
            1 => 8,
            5 => 4,
            2 => {
                let len = usize::try_from(varint(&mut bytes)?).map_err(|_| "too long")?;
                let value = bytes.get(..len).ok_or("truncated")?;
                fields.push(Field::Bytes(key >> 3, value));
                len
            }
            _ => return Err("unsupported wire type"),
        };
        bytes = bytes.get(skip..).ok_or("truncated")?;
    }
    Ok(fields)
}
