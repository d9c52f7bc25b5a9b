// A bar chart of tokens per period as inline SVG, with a table of the same
// numbers for screen readers and anyone who wants them exact.

import { h, num, s } from './dom.js';

// barChart draws points [{label, title, value}] and returns an element.
export function barChart(points, { unit = 'tokens', caption = '' } = {}) {
  const W = 720;
  const H = 200;
  const pad = { top: 16, right: 28, bottom: 32, left: 60 };
  const max = Math.max(1, ...points.map((p) => p.value));
  const innerW = W - pad.left - pad.right;
  const innerH = H - pad.top - pad.bottom;
  const step = innerW / Math.max(points.length, 1);
  const barW = Math.max(1, Math.min(40, step * 0.7));
  const total = points.reduce((a, p) => a + p.value, 0);

  const svg = s('svg', {
    viewBox: `0 0 ${W} ${H}`, class: 'chart', role: 'img',
    'aria-label': `${caption}: ${num(total)} ${unit} over ${points.length} periods, at most ${num(max)} in one`,
  });
  for (const f of [0, 0.5, 1]) {
    const y = pad.top + innerH * (1 - f);
    svg.append(
      s('line', { x1: pad.left, x2: W - pad.right, y1: y, y2: y, class: 'grid' }),
      s('text', { x: pad.left - 6, y: y + 4, class: 'axis', 'text-anchor': 'end', text: compact(max * f) }),
    );
  }
  points.forEach((p, i) => {
    const bh = (p.value / max) * innerH;
    const x = pad.left + i * step + (step - barW) / 2;
    svg.append(s('rect', {
      x, y: pad.top + innerH - bh, width: barW, height: Math.max(bh, p.value > 0 ? 1 : 0), class: 'bar', rx: 2,
    }, s('title', { text: `${p.title}: ${num(p.value)} ${unit}` })));
  });
  const labelEvery = Math.max(1, Math.ceil(points.length / 5));
  points.forEach((p, i) => {
    if ((points.length - 1 - i) % labelEvery !== 0) return;
    svg.append(s('text', { x: pad.left + i * step + step / 2, y: H - 8, class: 'axis', 'text-anchor': 'middle', text: p.label }));
  });

  const table = h('table', { class: 'data-table' },
    h('caption', {}, caption),
    h('thead', {}, h('tr', {}, h('th', { scope: 'col' }, 'Period'), h('th', { scope: 'col' }, unit))),
    h('tbody', {}, points.map((p) => h('tr', {}, h('th', { scope: 'row' }, p.title), h('td', {}, num(p.value))))),
  );
  return h('figure', { class: 'chart-figure' },
    svg,
    h('details', { class: 'chart-table' }, h('summary', {}, 'Show as a table'), table),
  );
}

function compact(n) {
  if (n >= 1e6) return `${(n / 1e6).toFixed(1)}M`;
  if (n >= 1e3) return `${(n / 1e3).toFixed(1)}k`;
  return String(Math.round(n));
}
