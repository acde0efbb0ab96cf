import { LabIcon } from '@jupyterlab/ui-components';

/** A cloud over three nodes: runs on a market of machines. */
const svgstr = `<svg xmlns="http://www.w3.org/2000/svg" width="16" height="16" viewBox="0 0 24 24">
  <g class="jp-icon3" fill="#616161">
    <path d="M18.5 10.2A6 6 0 0 0 7 8.6 4.6 4.6 0 0 0 7.4 17.8h10.8a3.8 3.8 0 0 0 .3-7.6zm-.3 5.8H7.4a2.8 2.8 0 0 1-.2-5.6l.7-.1.3-.7a4.2 4.2 0 0 1 8.1 1.3l.1.9h.9a2.1 2.1 0 0 1-.1 4.2z"/>
    <circle cx="6" cy="21" r="1.5"/>
    <circle cx="12" cy="21" r="1.5"/>
    <circle cx="18" cy="21" r="1.5"/>
  </g>
</svg>`;

export const decloudIcon = new LabIcon({ name: 'decloud-magics:runs', svgstr });
