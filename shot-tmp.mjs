import { chromium } from 'playwright-core';
const b = await chromium.launch({ executablePath: '/usr/bin/chromium', args: ['--no-sandbox', '--disable-gpu'] });
const p = await b.newPage({ viewport: { width: 1400, height: 1000 } });
p.on('pageerror', (e) => console.log('PAGE ERROR', e.message));
p.on('console', (m) => console.log('console', m.type(), m.text()));
await p.goto(process.argv[2]);
await p.waitForTimeout(2500);
await p.screenshot({ path: process.argv[3], fullPage: true });
await b.close();
