export PYTHONUNBUFFERED=1
R="env PYTHONPATH=src python3 -m relulab"
S() { python3 -c "import json,sys; r=json.load(open(sys.argv[1])); r=r if isinstance(r,list) else [r]; [print(sys.argv[1].split('/')[-1], x['seed'], x['data'].get('trained_with'), x['data'].get('compiled'), x['data'].get('stacked'), round(x['best_val_acc'],4), [round(e['seconds'],2) for e in x['history']]) for x in r]" $1; }
time $R train -m seed-cnn --image-size 32 -e 3 -b 128 --seed 0 --seed 1 --save $OUT/m.pt --out $OUT/cnn_digits.json > /dev/null; S $OUT/cnn_digits.json
$R evaluate $OUT/m-seed0.pt
time $R train -e 2 --seed 0 --seed 1 --out $OUT/mlp_digits.json > /dev/null; S $OUT/mlp_digits.json
C="-d cifar10 --data-path .carry/cifar10-jpeg.tar.gz --split test -m seed-cnn --optimizer adam --flavour keras -b 128 -e 3"
time $R train $C --no-pack --out $OUT/cifar_nopack.json > /dev/null; S $OUT/cifar_nopack.json
time $R train $C --out $OUT/cifar_pack.json > /dev/null; S $OUT/cifar_pack.json
time $R train $C --compile --seed 0 --seed 1 --out $OUT/cifar_pack2_compile.json > /dev/null; S $OUT/cifar_pack2_compile.json
$R train -e 1 --compile --no-pack; echo "exit $?"
