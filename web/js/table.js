import { byId, h, replacePreserving } from './dom.js';

/**
 * A sortable, filterable, paged table over rows the page holds. The header (sort buttons) and the filters are
 * built once; each render replaces only the body and the pager, keeping focus by `data-key`. Sorting and paging
 * run here over what the API returned; filters that the API offers are applied by the caller's loader.
 *
 * columns: [{ key, label, sort?: row => value, cell: row => Node|string, className?, when?: () => boolean }]
 * A column with `when` is shown only while it answers true (the account column, for admins): the header is
 * rebuilt when the set of shown columns changes.
 */
export function createTable({ mount, caption, columns: allColumns, rowKey, pageSize = 20, initialSort, emptyText, onRowOpen }) {
  const root = byId(mount);
  let rows = [];
  let sort = initialSort ?? { key: allColumns[0].key, dir: 'asc' };
  let page = 0;
  const ids = `${mount}-t`;
  const shownColumns = () => allColumns.filter((c) => !c.when || c.when());
  let columns = shownColumns();

  const sortButtons = new Map();
  const head = () => {
    sortButtons.clear();
    return h(
      'thead',
      { id: `${ids}-head` },
      h(
        'tr',
        {},
        columns.map((c) => {
          if (!c.sort) return h('th', { scope: 'col', class: c.className }, c.label);
          const btn = h('button', { type: 'button', class: 'sort', 'data-key': `${ids}:sort:${c.key}` }, c.label, h('span', { class: 'sort-mark', 'aria-hidden': 'true' }));
          btn.addEventListener('click', () => {
            sort = sort.key === c.key ? { key: c.key, dir: sort.dir === 'asc' ? 'desc' : 'asc' } : { key: c.key, dir: 'asc' };
            page = 0;
            render();
          });
          const th = h('th', { scope: 'col', class: c.className }, btn);
          sortButtons.set(c.key, th);
          return th;
        }),
      ),
    );
  };
  const thead = head();
  const tbody = h('tbody', { id: `${ids}-body` });
  const table = h('table', { class: 'data', id: ids }, h('caption', { class: 'visually-hidden' }, caption), thead, tbody);
  const pager = h('div', { class: 'pager', id: `${ids}-pager` });
  root.replaceChildren(h('div', { class: 'table-wrap', role: 'region', 'aria-label': caption, tabindex: '0' }, table), pager);

  function sorted() {
    const col = columns.find((c) => c.key === sort.key);
    if (!col?.sort) return rows;
    const factor = sort.dir === 'asc' ? 1 : -1;
    return [...rows].sort((a, b) => {
      const x = col.sort(a);
      const y = col.sort(b);
      if (x === y) return 0;
      if (x === null || x === undefined) return 1;
      if (y === null || y === undefined) return -1;
      return (typeof x === 'number' && typeof y === 'number' ? x - y : String(x).localeCompare(String(y), undefined, { numeric: true })) * factor;
    });
  }

  function render() {
    const nowShown = shownColumns();
    if (nowShown.map((c) => c.key).join() !== columns.map((c) => c.key).join()) {
      columns = nowShown;
      replacePreserving(byId(`${ids}-head`), head());
    }
    for (const [key, th] of sortButtons) {
      th.setAttribute('aria-sort', key === sort.key ? (sort.dir === 'asc' ? 'ascending' : 'descending') : 'none');
      th.querySelector('.sort-mark').textContent = key === sort.key ? (sort.dir === 'asc' ? ' ▲' : ' ▼') : '';
    }
    const all = sorted();
    const pages = Math.max(1, Math.ceil(all.length / pageSize));
    page = Math.min(page, pages - 1);
    const shown = all.slice(page * pageSize, (page + 1) * pageSize);
    const body = h(
      'tbody',
      { id: `${ids}-body` },
      shown.length
        ? shown.map((r) => h('tr', { 'data-row': rowKey(r) }, columns.map((c) => h(c.key === columns[0].key ? 'th' : 'td', c.key === columns[0].key ? { scope: 'row', class: c.className } : { class: c.className }, c.cell(r)))))
        : h('tr', {}, h('td', { colspan: String(columns.length), class: 'empty-row' }, emptyText)),
    );
    replacePreserving(byId(`${ids}-body`), body);
    const first = all.length ? page * pageSize + 1 : 0;
    const last = Math.min(all.length, (page + 1) * pageSize);
    const prev = h('button', { type: 'button', class: 'btn', 'data-key': `${ids}:prev`, disabled: page === 0, 'aria-label': `Previous page of ${caption}` }, 'Previous');
    const next = h('button', { type: 'button', class: 'btn', 'data-key': `${ids}:next`, disabled: page >= pages - 1, 'aria-label': `Next page of ${caption}` }, 'Next');
    prev.addEventListener('click', () => {
      page--;
      render();
    });
    next.addEventListener('click', () => {
      page++;
      render();
    });
    replacePreserving(
      byId(`${ids}-pager`),
      h('div', { class: 'pager', id: `${ids}-pager` }, h('span', { class: 'muted', role: 'status' }, `${first}–${last} of ${all.length}`), prev, next),
    );
    void onRowOpen;
  }

  return {
    setRows(next) {
      rows = next;
      render();
    },
    render,
    resetPage() {
      page = 0;
    },
  };
}
