// Drives the system Chromium (playwright-core, no downloaded browser) through a bundle's demo page.
//
// usage: node drive.mjs NODE_MODULES REQUEST_JSON
// request: {"url": "http://127.0.0.1:PORT/", "userDataDir": DIR, "screenshot": PATH|null,
//           "runs": [{"backends": "wasm" | "bogus,wasm" | null, "screenshot": bool}]}
// Prints one JSON object: {"runs": [{backends, info, predictAll, sample0, errors}], "requests": [url, ...]}
import { createRequire } from 'node:module';
import { readFileSync } from 'node:fs';
import { join } from 'node:path';

const [nodeModules, requestPath] = process.argv.slice(2);
const req = JSON.parse(readFileSync(requestPath, 'utf8'));
const { chromium } = createRequire(join(nodeModules, 'noop.js'))('playwright-core');

const context = await chromium.launchPersistentContext(req.userDataDir, {
  executablePath: req.executablePath ?? '/usr/bin/chromium',
  headless: true,
  args: [
    '--headless',
    '--no-sandbox',
    '--disable-gpu',
    '--disable-quic',
    '--no-first-run',
    '--disable-background-networking',
    '--disable-component-update',
    '--disable-sync',
  ],
  viewport: { width: 960, height: 640 },
});
const requests = [];
context.on('request', (r) => requests.push(r.url()));
const result = { runs: [], requests };
try {
  for (const run of req.runs) {
    const page = await context.newPage();
    const errors = [];
    page.on('pageerror', (e) => errors.push(String(e)));
    page.on('console', (m) => m.type() === 'error' && errors.push(m.text()));
    const url = run.backends ? `${req.url}?backends=${run.backends}` : req.url;
    await page.goto(url, { waitUntil: 'load' });
    const entry = { backends: run.backends, errors };
    try {
      entry.info = await page.evaluate(() => window.edgekitDemo.ready);
      entry.predictAll = await page.evaluate(() => window.edgekitDemo.predictAll());
      entry.sample0 = await page.evaluate(() => window.edgekitDemo.runSample(0));
      entry.pageText = await page.evaluate(() => document.body.innerText);
      if (run.screenshot && req.screenshot) await page.screenshot({ path: req.screenshot, fullPage: true });
    } catch (e) {
      entry.error = String(e && e.message ? e.message : e);
      entry.pageText = await page.evaluate(() => document.body.innerText).catch(() => '');
    }
    result.runs.push(entry);
    await page.close();
  }
} finally {
  await context.close();
}
process.stdout.write(JSON.stringify(result) + '\n');
