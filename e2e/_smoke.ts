import { startServer } from '@vessel/apiserver';
const s = await startServer({ dataDir: '/tmp/vsmoke', listen: '127.0.0.1:16443', log: (l) => console.error(l) });
console.log(s.url, s.kubeconfigPath);
