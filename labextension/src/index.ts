import {
  ILayoutRestorer,
  JupyterFrontEnd,
  JupyterFrontEndPlugin
} from '@jupyterlab/application';

import { decloudIcon } from './icon';
import { RunsPanel } from './panel';
import { DecloudService } from './service';

export { Decloud } from './models';
export { DecloudAPIError, DecloudService, requestAPI } from './service';
export { RunsPanel } from './panel';

/** The panel's widget id: the layout restorer and the sidebar tab know it by this. */
const PANEL_ID = 'decloud-runs';

const plugin: JupyterFrontEndPlugin<void> = {
  id: 'decloud-magics:runs-panel',
  description: 'A left side panel listing decloud runs from the local ledger, live.',
  autoStart: true,
  optional: [ILayoutRestorer],
  activate: (app: JupyterFrontEnd, restorer: ILayoutRestorer | null) => {
    const panel = new RunsPanel({ service: new DecloudService() });
    panel.id = PANEL_ID;
    panel.title.icon = decloudIcon;
    panel.title.caption = 'decloud runs';
    app.shell.add(panel, 'left', { rank: 950 });
    if (restorer) {
      restorer.add(panel, PANEL_ID);
    }
  }
};

export default plugin;
