/**
 * GET /docs: a self-contained page that renders /openapi.json as a readable list of operations. No CDN (this
 * service often runs without internet), no dependencies: plain HTML and a few lines of script.
 */
export const DOCS_HTML = `<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>volsnap API</title>
<style>
  body { font: 15px/1.5 system-ui, sans-serif; margin: 0 auto; max-width: 70rem; padding: 1rem 2rem; color: #1b1f23; }
  h1 { margin-bottom: 0 } .lead { color: #555 } h2 { border-bottom: 1px solid #ddd; padding-bottom: .2rem; margin-top: 2rem }
  details { border: 1px solid #ddd; border-radius: 6px; margin: .4rem 0; background: #fafbfc }
  summary { cursor: pointer; padding: .45rem .7rem; display: flex; gap: .8rem; align-items: baseline }
  .m { font: bold 12px monospace; padding: .1rem .45rem; border-radius: 4px; color: #fff; min-width: 3.6rem; text-align: center }
  .get { background: #2b7bb9 } .post { background: #2f9e44 } .put { background: #e67700 } .delete { background: #c92a2a }
  .p { font-family: monospace; font-weight: 600 } .s { color: #555 } .body { padding: .2rem 1rem 1rem }
  pre { background: #f1f3f5; padding: .6rem; border-radius: 4px; overflow: auto; font-size: 12.5px }
  table { border-collapse: collapse } td, th { border: 1px solid #ddd; padding: .2rem .5rem; text-align: left; vertical-align: top }
  code { background: #f1f3f5; padding: 0 .2rem; border-radius: 3px }
</style>
</head>
<body>
<h1>volsnap API</h1>
<p class="lead" id="lead">Loading <a href="/openapi.json">/openapi.json</a>…</p>
<div id="ops"></div>
<script>
const esc = (s) => String(s ?? '').replace(/[&<>"']/g, (c) => ({ '&': '&amp;', '<': '&lt;', '>': '&gt;', '"': '&quot;', "'": '&#39;' })[c]);
// Markdown code spans in descriptions (\`x\`) as <code>, the rest as text.
const md = (s) => esc(s).replace(/\x60([^\x60]+)\x60/g, '<code>$1</code>');
let components = {};
const deref = (s, depth = 0) => {
  if (!s || typeof s !== 'object' || depth > 6) return s;
  if (s.$ref) return deref(components[s.$ref.split('/').pop()], depth + 1);
  if (Array.isArray(s)) return s.map((x) => deref(x, depth + 1));
  return Object.fromEntries(Object.entries(s).map(([k, v]) => [k, deref(v, depth + 1)]));
};
const schemaBlock = (s) => '<pre>' + esc(JSON.stringify(deref(s), null, 2)) + '</pre>';
fetch('/openapi.json').then((r) => r.json()).then((doc) => {
  components = (doc.components && doc.components.schemas) || {};
  document.getElementById('lead').innerHTML = md(doc.info.description) +
    ' Authenticate with <code>Authorization: Bearer &lt;api key&gt;</code>. Raw document: <a href="/openapi.json">/openapi.json</a>.';
  const byTag = {};
  for (const [path, item] of Object.entries(doc.paths)) {
    for (const [method, op] of Object.entries(item)) {
      const tag = (op.tags && op.tags[0]) || 'Other';
      (byTag[tag] ||= []).push({ path, method, op });
    }
  }
  let html = '';
  for (const [tag, ops] of Object.entries(byTag)) {
    html += '<h2>' + esc(tag) + '</h2>';
    for (const { path, method, op } of ops) {
      html += '<details><summary><span class="m ' + method + '">' + method.toUpperCase() + '</span><span class="p">' + esc(path) +
        '</span><span class="s">' + md(op.summary) + '</span></summary><div class="body">';
      if (op.description) html += '<p>' + md(op.description) + '</p>';
      if (op.parameters && op.parameters.length) {
        html += '<h4>Parameters</h4><table><tr><th>name</th><th>in</th><th>required</th><th>schema</th></tr>';
        for (const p of op.parameters) {
          html += '<tr><td><code>' + esc(p.name) + '</code></td><td>' + esc(p.in) + '</td><td>' + (p.required ? 'yes' : 'no') +
            '</td><td>' + esc(JSON.stringify(deref(p.schema))) + (p.description ? '<br>' + md(p.description) : '') + '</td></tr>';
        }
        html += '</table>';
      }
      const body = op.requestBody && op.requestBody.content && op.requestBody.content['application/json'];
      if (body) html += '<h4>Request body' + (op.requestBody.required ? '' : ' (optional)') + '</h4>' + schemaBlock(body.schema);
      html += '<h4>Responses</h4>';
      for (const [code, res] of Object.entries(op.responses || {})) {
        const content = res.content && Object.values(res.content)[0];
        html += '<p><b>' + esc(code) + '</b> ' + md(res.description) + '</p>';
        if (content && code < '300') html += schemaBlock(content.schema);
      }
      html += '</div></details>';
    }
  }
  document.getElementById('ops').innerHTML = html;
}).catch((e) => { document.getElementById('lead').textContent = 'Could not load /openapi.json: ' + e; });
</script>
</body>
</html>
`;
