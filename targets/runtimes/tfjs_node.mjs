// Runs a TF.js graph model (model.json + weight shards) in Node for edgekit's TfjsNodeRuntime.
//
// usage: node tfjs_node.mjs MODEL_JSON NODE_MODULES [cpu|wasm]
// Protocol: one JSON object per line on stdin, one reply per line on stdout.
//   request  {"feeds": {name: {"dtype": "float32", "shape": [...], "data": base64}}}
//   reply    {"outputs": [{"name", "dtype", "shape", "data": base64}], "ms": float} | {"error": str}
// First line written is the model description: {"ready": true, "inputs": [...], "outputs": [...], ...}.
// The tfjs packages are resolved from NODE_MODULES (the toolchain's npm install), not from here.
import { createRequire } from 'node:module';
import { readFileSync } from 'node:fs';
import { dirname, join } from 'node:path';
import { createInterface } from 'node:readline';

const [modelJson, nodeModules, backendName = 'cpu'] = process.argv.slice(2);

// tfjs greets with console.log ("install tfjs-node ..."): keep stdout for the protocol only.
console.log = (...args) => console.error(...args);
const send = (obj) => process.stdout.write(JSON.stringify(obj) + '\n');

const require = createRequire(join(nodeModules, 'noop.js'));
const tf = require('@tensorflow/tfjs');

const DTYPES = { float32: Float32Array, int32: Int32Array, bool: Uint8Array };

function loadArtifacts(path) {
  const manifest = JSON.parse(readFileSync(path, 'utf8'));
  const dir = dirname(path);
  const weightSpecs = [];
  const buffers = [];
  for (const group of manifest.weightsManifest || []) {
    weightSpecs.push(...group.weights);
    for (const p of group.paths) buffers.push(readFileSync(join(dir, p)));
  }
  const all = Buffer.concat(buffers);
  return {
    modelTopology: manifest.modelTopology,
    format: manifest.format,
    generatedBy: manifest.generatedBy,
    convertedBy: manifest.convertedBy,
    signature: manifest.signature,
    userDefinedMetadata: manifest.userDefinedMetadata,
    modelInitializer: manifest.modelInitializer,
    weightSpecs,
    weightData: all.buffer.slice(all.byteOffset, all.byteOffset + all.byteLength),
  };
}

function toTensor(spec) {
  const bytes = Buffer.from(spec.data, 'base64');
  const Ctor = DTYPES[spec.dtype];
  if (!Ctor) throw new Error(`unsupported input dtype ${spec.dtype}`);
  const copy = new Uint8Array(bytes); // aligned copy for the typed array view
  return tf.tensor(new Ctor(copy.buffer, 0, copy.byteLength / Ctor.BYTES_PER_ELEMENT), spec.shape, spec.dtype);
}

function fromTensor(name, t) {
  const data = t.dataSync();
  const buf = Buffer.from(data.buffer, data.byteOffset, data.byteLength);
  return { name, dtype: t.dtype, shape: t.shape, data: buf.toString('base64') };
}

async function main() {
  if (backendName === 'wasm') {
    // Registers the 'wasm' backend on import; its .wasm binaries live in the package's dist/.
    const { setWasmPaths } = require('@tensorflow/tfjs-backend-wasm');
    setWasmPaths(join(nodeModules, '@tensorflow/tfjs-backend-wasm/dist/'));
  }
  await tf.setBackend(backendName);
  await tf.ready();
  const model = await tf.loadGraphModel(tf.io.fromMemory(loadArtifacts(modelJson)));
  const strip = (n) => n.replace(/:\d+$/, '');
  const outputNames = model.outputNodes.map(strip);
  send({
    ready: true,
    backend: tf.getBackend(),
    tfjs: tf.version.tfjs,
    inputs: model.inputs.map((t) => ({ name: strip(t.name), dtype: t.dtype, shape: t.shape })),
    outputs: model.outputs.map((t, i) => ({ name: outputNames[i], dtype: t.dtype, shape: t.shape })),
  });

  const rl = createInterface({ input: process.stdin, crlfDelay: Infinity });
  for await (const line of rl) {
    if (!line.trim()) continue;
    let feeds = {};
    try {
      const req = JSON.parse(line);
      for (const [name, spec] of Object.entries(req.feeds)) feeds[name] = toTensor(spec);
      const t0 = performance.now();
      let result;
      try {
        result = model.execute(feeds, model.outputNodes);
      } catch (e) {
        // Graphs with control flow / dynamic shapes must run asynchronously.
        if (!/executeAsync/.test(String(e.message))) throw e;
        result = await model.executeAsync(feeds, model.outputNodes);
      }
      const list = Array.isArray(result) ? result : [result];
      const outputs = list.map((t, i) => fromTensor(outputNames[i], t)); // dataSync waits for compute
      const ms = performance.now() - t0;
      tf.dispose(list);
      send({ outputs, ms });
    } catch (e) {
      send({ error: String((e && e.stack) || e) });
    } finally {
      tf.dispose(Object.values(feeds));
    }
  }
}

main().catch((e) => {
  send({ error: String((e && e.stack) || e), fatal: true });
  process.exit(1);
});
