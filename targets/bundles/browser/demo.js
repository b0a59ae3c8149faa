// The demo page's logic: pick a bundled sample (or a random input), run it, show outputs + latency.
// window.edgekitDemo exposes the same actions to automated tests (tests/targets/test_browser_bundle.py).
import { MODEL, load, predict, info, compareOutputs } from './edgekit-model.js';

const $ = (id) => document.getElementById(id);
const params = new URLSearchParams(location.search);
let sample = null;
let current = null; // {feeds, expected|null, label|null}

function product(a) {
  return a.reduce((x, y) => x * y, 1);
}

function sliceSample(i) {
  const feeds = {};
  for (const spec of MODEL.inputs) {
    const t = sample.inputs[spec.name];
    const per = product(t.shape.slice(1));
    feeds[spec.name] = { data: Float32Array.from(t.data.slice(i * per, (i + 1) * per)), shape: [1, ...t.shape.slice(1)] };
  }
  let expected = null;
  if (sample.expected) {
    expected = {};
    for (const [name, t] of Object.entries(sample.expected)) {
      const per = product(t.shape.slice(1));
      expected[name] = t.data.slice(i * per, (i + 1) * per);
    }
  }
  return { feeds, expected, label: sample.labels ? sample.labels[i] : null };
}

function randomInput() {
  // Uniform in the sample's value range, so the picture and the scale stay meaningful.
  const feeds = {};
  for (const spec of MODEL.inputs) {
    const t = sample.inputs[spec.name];
    const lo = Math.min(...t.data), hi = Math.max(...t.data);
    const shape = [1, ...t.shape.slice(1)];
    feeds[spec.name] = { data: Float32Array.from({ length: product(shape) }, () => lo + Math.random() * (hi - lo)), shape };
  }
  return { feeds, expected: null, label: null };
}

function drawInput() {
  const spec = MODEL.inputs[0];
  const f = current.feeds[spec.name];
  const view = $('input-view');
  view.innerHTML = '';
  const s = f.shape;
  const nchw = spec.layout === 'NCHW';
  const [c, h, w] = s.length === 4 ? (nchw ? [s[1], s[2], s[3]] : [s[3], s[1], s[2]]) : [0, 0, 0];
  if (s.length === 4 && (c === 1 || c === 3)) {
    const canvas = document.createElement('canvas');
    canvas.width = w;
    canvas.height = h;
    const scale = Math.max(1, Math.floor(160 / Math.max(h, w)));
    canvas.style.width = `${w * scale}px`;
    canvas.style.height = `${h * scale}px`;
    const ctx = canvas.getContext('2d');
    const img = ctx.createImageData(w, h);
    const lo = Math.min(...f.data), hi = Math.max(...f.data) || 1;
    for (let y = 0; y < h; y++)
      for (let x = 0; x < w; x++)
        for (let k = 0; k < 3; k++) {
          const ch = c === 1 ? 0 : k;
          const idx = nchw ? ch * h * w + y * w + x : (y * w + x) * c + ch;
          img.data[(y * w + x) * 4 + k] = Math.round((255 * (f.data[idx] - lo)) / (hi - lo || 1));
          img.data[(y * w + x) * 4 + 3] = 255;
        }
    ctx.putImageData(img, 0, 0);
    view.appendChild(canvas);
  }
  const label = current.label !== null ? `, true label ${MODEL.labels ? MODEL.labels[current.label] : current.label}` : '';
  $('input-desc').textContent = `${spec.name}: ${spec.dtype} [${f.shape.join(', ')}] ${spec.layout ?? ''}${label}`;
}

function showOutputs(out) {
  const table = $('outputs');
  table.innerHTML = '';
  for (const spec of MODEL.outputs) {
    const data = Array.from(out[spec.name].data);
    if (MODEL.task === 'classification' && data.length > 1) {
      const m = Math.max(...data);
      const exps = data.map((v) => Math.exp(v - m));
      const sum = exps.reduce((a, b) => a + b, 0);
      const top = data.map((v, i) => ({ i, v, p: exps[i] / sum })).sort((a, b) => b.v - a.v).slice(0, 5);
      for (const t of top) {
        const row = table.insertRow();
        row.insertCell().textContent = MODEL.labels ? MODEL.labels[t.i] : t.i;
        row.insertCell().innerHTML = `<span class="mono">${t.v.toFixed(3)}</span>`;
        const bar = row.insertCell();
        bar.className = 'bar';
        bar.innerHTML = `<div style="width:${(100 * t.p).toFixed(1)}%"></div>`;
        row.insertCell().textContent = `${(100 * t.p).toFixed(1)}%`;
      }
    } else {
      const row = table.insertRow();
      row.insertCell().textContent = spec.name;
      row.insertCell().innerHTML = `<span class="mono">[${data.slice(0, 8).map((v) => v.toFixed(4)).join(', ')}${data.length > 8 ? ', ...' : ''}]</span>`;
    }
  }
}

async function timed(feeds, repeats) {
  let t0 = performance.now();
  const out = await predict(feeds);
  const first = performance.now() - t0;
  t0 = performance.now();
  for (let i = 0; i < repeats; i++) await predict(feeds);
  return { out, first, mean: repeats ? (performance.now() - t0) / repeats : first };
}

async function runCurrent() {
  $('status').textContent = 'running…';
  const { out, first, mean } = await timed(current.feeds, 20);
  showOutputs(out);
  $('latency').textContent = `latency: first ${first.toFixed(2)} ms, mean of 20 ${mean.toFixed(2)} ms (${info().runtime} ${info().backend})`;
  if (current.expected) {
    const exp = Object.fromEntries(Object.entries(current.expected).map(([k, v]) => [k, { data: v }]));
    const cmp = compareOutputs(out, exp, sample.tolerance);
    const tol = `max abs <= ${sample.tolerance.atol} or cosine >= ${sample.tolerance.min_cosine}`;
    $('check').innerHTML = `vs onnxruntime fp32: max abs diff ${cmp.maxAbsDiff.toExponential(2)}, cosine ${cmp.cosine.toFixed(6)} <span class="${cmp.ok ? 'ok' : 'bad'}">${cmp.ok ? '✓ within' : '✗ outside'} (${tol})</span>`;
  } else {
    $('check').textContent = 'no reference for a random input';
  }
  $('status').textContent = '';
  return { out, first, mean };
}

function plain(out) {
  const r = {};
  for (const [k, v] of Object.entries(out)) r[k] = { data: Array.from(v.data, Number), shape: v.shape };
  return r;
}

async function main() {
  $('title').textContent = MODEL.name;
  sample = await (await fetch('./sample_input.json')).json();
  const n = sample.inputs[MODEL.inputs[0].name].shape[0];
  for (let i = 0; i < n; i++) {
    const o = document.createElement('option');
    o.value = i;
    const lab = sample.labels ? ` (label ${MODEL.labels ? MODEL.labels[sample.labels[i]] : sample.labels[i]})` : '';
    o.textContent = `#${i}${lab}`;
    $('sample').appendChild(o);
  }
  current = sliceSample(0);
  drawInput();
  const backends = params.get('backends') ? params.get('backends').split(',') : undefined;
  const li = await load({ backends });
  $('meta').textContent = `${MODEL.runtime} ${li.version} · backend ${li.backend} · ${MODEL.precision} · ` +
    `loaded in ${li.loadMs.toFixed(0)} ms · model ${(MODEL.sizes.model / 1024).toFixed(1)} KiB, runtime ${(MODEL.sizes.runtime / 1048576).toFixed(1)} MiB`;
  $('run').disabled = false;
  $('run').onclick = () => runCurrent();
  $('sample').onchange = (e) => { current = sliceSample(Number(e.target.value)); drawInput(); runCurrent(); };
  $('random').onclick = () => { current = randomInput(); drawInput(); runCurrent(); };
  return li;
}

const ready = main();
ready.catch((e) => {
  $('meta').innerHTML = `<span class="bad">${e.message}</span>`;
});

window.edgekitDemo = {
  ready,
  info,
  /** Run bundled sample i through the page (as the Run button does); plain arrays back. */
  async runSample(i) {
    await ready;
    $('sample').value = String(i);
    current = sliceSample(i);
    drawInput();
    const r = await runCurrent();
    return { outputs: plain(r.out), firstMs: r.first, meanMs: r.mean, backend: info().backend };
  },
  /** All bundled samples as one batch through predict(). */
  async predictAll() {
    await ready;
    const feeds = {};
    for (const spec of MODEL.inputs) feeds[spec.name] = sample.inputs[spec.name];
    const t0 = performance.now();
    const out = await predict(feeds);
    return { outputs: plain(out), ms: performance.now() - t0, backend: info().backend };
  },
};
